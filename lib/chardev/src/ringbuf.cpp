// SPDX-License-Identifier: MIT
// Ring buffer storage: the most recent `capacity` bytes, consumed by reads.
#include "bjd/chardev/ringbuf.hpp"

#include <algorithm>
#include <cassert>

namespace bjd::chardev {

ringbuf::ringbuf(std::size_t capacity) : buf_(capacity)
{
    assert(is_power_of_two(static_cast<std::int64_t>(capacity)));
}

void ringbuf::write(std::span<const std::byte> data)
{
    const std::uint64_t mask = buf_.size() - 1;
    for (std::byte b : data)
        buf_[prod_++ & mask] = static_cast<char>(b);
    if (prod_ - cons_ > buf_.size())
        cons_ = prod_ - buf_.size();   // overwritten: the oldest bytes are gone
}

void ringbuf::write(std::string_view data)
{
    write(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data.data()), data.size()));
}

std::string ringbuf::read(std::size_t max)
{
    const std::uint64_t mask = buf_.size() - 1;
    std::size_t n = std::min(max, available());
    std::string out;
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i)
        out.push_back(buf_[cons_++ & mask]);
    return out;
}

} // namespace bjd::chardev
