// SPDX-License-Identifier: MIT
// null-co / null-aio: a sink of a given size, for tests and benchmarks.
#include "bjd/block/driver.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <cstring>

namespace bjd::block {
namespace {

class null_node final : public node {
public:
    null_node(node_options o, std::string_view drv, std::uint64_t size, std::uint64_t latency_ns, bool read_zeroes)
        : node(std::move(o)), driver_(drv), requested_size_(size), size_((size + 511) / 512 * 512),
          latency_ns_(latency_ns), read_zeroes_(read_zeroes)
    {
    }

    std::string_view driver() const noexcept override { return driver_; }
    std::string filename() const override { return driver_ + "://"; }
    std::optional<boost::json::object> json_options() const override
    {
        if (requested_size_ == std::uint64_t(1) << 30 && !read_zeroes_ && latency_ns_ == 0)
            return std::nullopt;
        boost::json::object o{{"driver", driver_}};
        if (requested_size_ != std::uint64_t(1) << 30)
            o["size"] = requested_size_;
        if (read_zeroes_)
            o["read-zeroes"] = true;
        if (latency_ns_)
            o["latency-ns"] = latency_ns_;
        return o;
    }
    std::uint64_t size() const noexcept override { return size_; }
    std::int64_t allocated_size() const override { return 0; }
    bool zero_init() const noexcept override { return read_zeroes_; }
    bool flush_on_close() const noexcept override { return false; }   // nothing to write back
    bool can_discard() const noexcept override { return false; }   // QEMU's null has no discard

protected:
    asio::awaitable<result<void>> do_read(std::uint64_t, std::span<std::byte> buf) override
    {
        co_await delay();
        // Even without read-zeroes we never hand out stale memory: zeroing is cheap next to a leak.
        std::memset(buf.data(), 0, buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write(std::uint64_t, std::span<const std::byte>, bool) override
    {
        co_await delay();
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t, std::uint64_t, zero_flags) override
    {
        co_await delay();
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_flush() override
    {
        co_await delay();
        co_return result<void>{};
    }
    asio::awaitable<result<extent>> do_block_status(std::uint64_t off, std::uint64_t length) override
    {
        co_return **do_block_status_now(off, length);
    }
    std::optional<result<extent>> do_block_status_now(std::uint64_t, std::uint64_t length) override
    {
        return extent{read_zeroes_ ? (status_zero | status_allocated) : status_allocated, length};
    }

private:
    asio::awaitable<void> delay()
    {
        if (latency_ns_ == 0)
            co_return;
        asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::nanoseconds(latency_ns_));
        co_await t.async_wait(asio::use_awaitable);
    }

    std::string driver_;
    std::uint64_t requested_size_;
    std::uint64_t size_;
    std::uint64_t latency_ns_;
    bool read_zeroes_;
};

} // namespace

std::shared_ptr<node> open_null(node_options common, std::string_view driver, std::uint64_t size,
                                std::uint64_t latency_ns, bool read_zeroes)
{
    return std::make_shared<null_node>(std::move(common), driver, size, latency_ns, read_zeroes);
}

} // namespace bjd::block
