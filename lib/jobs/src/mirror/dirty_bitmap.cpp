// SPDX-License-Identifier: MIT
#include "mirror/dirty_bitmap.hpp"

#include <algorithm>
#include <bit>
#include <cassert>

namespace bjd::jobs::detail {

dirty_bitmap::dirty_bitmap(std::uint64_t size, std::uint64_t granularity)
    : size_(size), gran_(granularity), nchunks_((size + granularity - 1) / granularity), bits_((nchunks_ + 63) / 64)
{
    assert(std::has_single_bit(granularity));
}

std::uint64_t dirty_bitmap::chunk_bytes(std::uint64_t chunk) const noexcept
{
    std::uint64_t start = chunk * gran_;
    return std::min(gran_, size_ - start);
}

void dirty_bitmap::set_chunks(std::uint64_t first, std::uint64_t last, bool v)
{
    for (std::uint64_t c = first; c <= last && c < nchunks_; ++c) {
        std::uint64_t& w = bits_[c / 64];
        std::uint64_t m = std::uint64_t(1) << (c % 64);
        if (bool(w & m) == v)
            continue;
        if (v) {
            w |= m;
            dirty_bytes_ += chunk_bytes(c);
        } else {
            w &= ~m;
            dirty_bytes_ -= chunk_bytes(c);
        }
    }
}

void dirty_bitmap::set(std::uint64_t offset, std::uint64_t length)
{
    if (length == 0 || offset >= size_)
        return;
    set_chunks(offset / gran_, (offset + length - 1) / gran_, true);
}

void dirty_bitmap::reset(std::uint64_t offset, std::uint64_t length)
{
    if (length == 0 || offset >= size_)
        return;
    set_chunks(offset / gran_, (offset + length - 1) / gran_, false);
}

void dirty_bitmap::reset_covered(std::uint64_t offset, std::uint64_t length)
{
    std::uint64_t end = std::min(offset + length, size_);
    std::uint64_t first = (offset + gran_ - 1) / gran_;
    std::uint64_t last_excl = end == size_ ? nchunks_ : end / gran_;
    if (first < last_excl)
        set_chunks(first, last_excl - 1, false);
}

std::optional<std::uint64_t> dirty_bitmap::next_dirty(std::uint64_t from) const noexcept
{
    if (dirty_bytes_ == 0 || nchunks_ == 0)
        return std::nullopt;
    if (from >= nchunks_)
        from = 0;
    auto scan = [&](std::uint64_t lo, std::uint64_t hi) -> std::optional<std::uint64_t> {
        std::uint64_t c = lo;
        while (c < hi) {
            std::uint64_t w = bits_[c / 64] >> (c % 64);
            if (w) {
                c += std::countr_zero(w);
                return c < hi ? std::optional<std::uint64_t>(c) : std::nullopt;
            }
            c = (c / 64 + 1) * 64;
        }
        return std::nullopt;
    };
    if (auto c = scan(from, nchunks_))
        return c;
    return scan(0, from);
}

} // namespace bjd::jobs::detail
