// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Support for the fuzz targets: an in-memory block node (a file whose bytes are the fuzzer's
/// input), a coroutine runner, and a little tape that turns input bytes into parameters.
/// No disk I/O, no threads: every target runs its coroutines on one io_context.
#include "bjd/block/driver.hpp"
#include "bjd/log.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <span>
#include <vector>

namespace bjd::fuzz {

namespace asio = boost::asio;

/// Quiets the module loggers once: corrupt-image errors are expected by the thousand.
inline void quiet_logs()
{
    static bool done = [] {
        log::init_logging(spdlog::level::off, log::style::terminal);
        return true;
    }();
    (void)done;
}

/// A memory-backed "file" node: reads past nothing (the node layer checks ranges), writes in
/// place, truncate grows or shrinks up to `max_size` (beyond it: ENOSPC, like a full disk), so
/// a format driver on top can allocate without touching the disk. With `yield`, every request
/// first goes round the loop, as real I/O does, so concurrent requests interleave.
class mem_file final : public block::node {
public:
    mem_file(std::string name, std::vector<std::byte> bytes, bool read_only, std::uint64_t max_size)
        : node(block::node_options{.name = std::move(name), .read_only = read_only, .discard_unmap = true})
        , data_(std::move(bytes)), max_size_(std::max<std::uint64_t>(max_size, data_.size())) {}

    std::string_view driver() const noexcept override { return "file"; }
    std::uint64_t size() const noexcept override { return data_.size(); }
    bool zero_init() const noexcept override { return true; }

    std::vector<std::byte> data_;
    bool yield = false;

protected:
    asio::awaitable<void> pause()
    {
        if (yield)
            co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    }
    asio::awaitable<result<void>> do_read(std::uint64_t off, std::span<std::byte> buf) override
    {
        co_await pause();
        if (off > data_.size() || buf.size() > data_.size() - off)
            co_return errno_error(EINVAL);
        std::memcpy(buf.data(), data_.data() + off, buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool) override
    {
        co_await pause();
        if (off > data_.size() || buf.size() > data_.size() - off)
            co_return errno_error(EINVAL);   // shrunk meanwhile
        std::memcpy(data_.data() + off, buf.data(), buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t off, std::uint64_t len, block::zero_flags) override
    {
        co_await pause();
        if (off > data_.size() || len > data_.size() - off)
            co_return errno_error(EINVAL);
        std::memset(data_.data() + off, 0, len);
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t off, std::uint64_t len) override
    {
        co_await pause();
        if (off > data_.size() || len > data_.size() - off)
            co_return errno_error(EINVAL);
        std::memset(data_.data() + off, 0, len);
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_flush() override
    {
        co_await pause();
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_truncate(std::uint64_t size) override
    {
        co_await pause();
        if (size > max_size_)
            co_return errno_error(ENOSPC);
        data_.resize(size);
        co_return result<void>{};
    }

private:
    std::uint64_t max_size_;
};

/// Runs `a` on `io` until it finishes. Every I/O here completes without waiting, so the loop
/// only stops early if the code under test waits for something that never comes: a hang,
/// which is reported as a crash (abort) so the fuzzer keeps the input.
template <class T>
T run(asio::io_context& io, asio::awaitable<T> a)
{
    std::optional<T> out;
    std::exception_ptr ep;
    bool done = false;
    asio::co_spawn(io, std::move(a), [&](std::exception_ptr e, T v) {
        done = true;
        ep = e;
        if (!e)
            out.emplace(std::move(v));
    });
    io.restart();
    while (!done && io.run_one() > 0) {}
    if (!done)
        std::abort();   // a coroutine waits forever: a hang in the code under test
    if (ep)
        std::rethrow_exception(ep);   // an escaping exception is a bug too: let it crash
    return std::move(*out);
}

/// Parameters from the input bytes: reads go round the span, never past it; an empty span
/// yields zeroes.
class tape {
public:
    explicit tape(std::span<const std::uint8_t> bytes) : b_(bytes) {}
    std::uint8_t u8() { return b_.empty() ? 0 : b_[pos_++ % b_.size()]; }
    std::uint32_t u32()
    {
        std::uint32_t v = 0;
        for (int i = 0; i < 4; ++i)
            v = (v << 8) | u8();
        return v;
    }
    std::uint64_t u64() { return (std::uint64_t(u32()) << 32) | u32(); }
    /// A value in [0, n) (0 when n is 0).
    std::uint64_t below(std::uint64_t n) { return n ? u64() % n : 0; }

private:
    std::span<const std::uint8_t> b_;
    std::size_t pos_ = 0;
};

} // namespace bjd::fuzz
