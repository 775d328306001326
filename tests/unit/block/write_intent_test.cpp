// SPDX-License-Identifier: MIT
// The write-intent hook (node.hpp, write_intent_hook): every write-type request that entered
// it leaves it exactly once, on every path out, and no request stays counted in flight.
#include "bjd/block/node.hpp"

#include <boost/asio/io_context.hpp>

#include "run_request.hpp"

#include <catch2/catch.hpp>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

using namespace bjd;
using namespace bjd::block;

namespace {

/// Memory that refuses every write-zeroes (as rbd refuses one that may not unmap).
class no_zero_node final : public node {
public:
    no_zero_node(std::vector<std::string>& log) : node(node_options{.name = "n", .discard_unmap = true}), data_(1 << 20), log_(log) {}
    std::string_view driver() const noexcept override { return "mem"; }
    std::uint64_t size() const noexcept override { return data_.size(); }

protected:
    asio::awaitable<result<void>> do_read(std::uint64_t off, std::span<std::byte> buf) override
    {
        std::memcpy(buf.data(), data_.data() + off, buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool) override
    {
        log_.push_back("write");
        std::memcpy(data_.data() + off, buf.data(), buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t, std::uint64_t, zero_flags) override
    {
        log_.push_back("write_zeroes refused");
        co_return errno_error(ENOTSUP);
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t, std::uint64_t) override
    {
        log_.push_back("discard");
        co_return result<void>{};
    }

private:
    std::vector<std::byte> data_;
    std::vector<std::string>& log_;
};

class counting_hook final : public write_intent_hook {
public:
    explicit counting_hook(std::vector<std::string>& log) : log_(log) {}
    bool enter(std::uint64_t, std::uint64_t) override
    {
        ++entered;
        return go_at_once;
    }
    asio::awaitable<void> wait(std::uint64_t, std::uint64_t) override
    {
        log_.push_back("hook wait");
        co_return;
    }
    void leave(std::uint64_t, std::uint64_t) override { ++left; }

    int entered = 0, left = 0;
    bool go_at_once = true;

private:
    std::vector<std::string>& log_;
};

} // namespace

TEST_CASE("block: every write-type request leaves the write-intent hook it entered, refused ones too", "[block]")
{
    asio::io_context loop;
    std::vector<std::string> log;
    auto n = std::make_shared<no_zero_node>(log);
    auto hook = std::make_shared<counting_hook>(log);
    n->set_write_intent_hook(hook);
    std::vector<std::byte> buf(4096, std::byte{0x5a});

    CHECK(test::run_request(loop, n->write(0, std::span<const std::byte>(buf))) == 0);
    // Refused by the driver and emulated with zero buffers.
    CHECK(test::run_request(loop, n->write_zeroes(8192, 4096)) == 0);
    // Refused without fallback: the caller emulates it; nothing was written here.
    CHECK(test::run_request(loop, n->write_zeroes(8192, 4096, zero_flags{.no_fallback = true})) == ENOTSUP);
    CHECK(test::run_request(loop, n->discard(0, 4096)) == 0);
    CHECK(hook->entered == 4);
    CHECK(hook->left == 4);
    CHECK(n->writes_in_flight() == 0);

    SECTION("a hook that does not let the request go on at once is waited for before the driver runs")
    {
        hook->go_at_once = false;
        log.clear();
        CHECK(test::run_request(loop, n->write(0, std::span<const std::byte>(buf))) == 0);
        CHECK(log == std::vector<std::string>{"hook wait", "write"});
        CHECK(hook->left == hook->entered);
        CHECK(n->writes_in_flight() == 0);
    }
}
