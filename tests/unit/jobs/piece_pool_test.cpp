// SPDX-License-Identifier: MIT
// The pieces of a copy step in flight at once (lib/jobs/src/copy/copy_driver.hpp): never more
// than the pool's depth, nor than its limit says at the moment (the copy yielding to guests).
#include "copy/copy_driver.hpp"
#include "bjd/jobs/guest_yield.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>

using namespace bjd::jobs::detail;
using bjd::jobs::guest_yield;
namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

struct counters {
    unsigned running = 0;
    unsigned most = 0;
    unsigned done = 0;
};

/// Starts `pieces` pieces that each take 2 ms, through a pool of `depth` with `limit`.
void copy(asio::io_context& io, counters& c, unsigned depth, unsigned pieces, piece_pool::limit_fn limit)
{
    auto piece = [&c, &io](unsigned, std::uint64_t, std::uint64_t) -> asio::awaitable<copy_step> {
        c.most = std::max(c.most, ++c.running);
        asio::steady_timer t(io, 2ms);
        co_await t.async_wait(asio::use_awaitable);
        --c.running;
        ++c.done;
        co_return copy_step{};
    };
    asio::co_spawn(
        io,
        [&, piece]() -> asio::awaitable<void> {
            piece_pool pool(io.get_executor(), depth, piece, limit);
            for (unsigned i = 0; i < pieces; ++i) {
                REQUIRE(co_await pool.ready());
                pool.spawn(i, 1);
            }
            auto failed = co_await pool.join();
            CHECK(!failed);
        },
        asio::detached);
    io.run();
    io.restart();
}

} // namespace

TEST_CASE("piece_pool: at most depth pieces, and at most the limit", "[copy][yield]")
{
    asio::io_context io;
    counters c;
    SECTION("no limit: the whole depth")
    {
        copy(io, c, 4, 20, {});
        CHECK(c.most == 4);
    }
    SECTION("a limit below the depth holds the pool to it")
    {
        copy(io, c, 4, 20, [] { return 2u; });
        CHECK(c.most == 2);
    }
    SECTION("a limit of 0 still lets one piece run, and one above the depth is the depth")
    {
        copy(io, c, 4, 6, [] { return 0u; });
        CHECK(c.most == 1);
        counters d;
        copy(io, d, 3, 9, [] { return 10u; });
        CHECK(d.most == 3);
    }
    SECTION("the limit is read again as pieces finish")
    {
        unsigned calls = 0;
        copy(io, c, 8, 30, [&calls] { return ++calls < 20 ? 1u : 8u; });
        CHECK(c.most == 8);
    }
    CHECK(c.done > 0);
    CHECK(c.running == 0);
}

TEST_CASE("guest_yield: requests counted in bulk weigh as the same requests one by one", "[copy][yield]")
{
    constexpr std::uint64_t MiB = 1 << 20;
    guest_yield::config cfg{.window = 50ms, .slack = 0.2, .base_memory = 10s};
    guest_yield one(MiB, 8 * MiB, cfg), bulk(MiB, 8 * MiB, cfg);
    const auto t0 = guest_yield::clock::time_point{} + 1h;
    // 10 windows at 500 us, then 10 at 900 us (far above the base): each millisecond one
    // request for `one`; every 10 ms the same ten requests at once for `bulk`.
    for (int ms = 0; ms < 1000; ++ms) {
        const auto lat = ms < 500 ? 500us : 900us;
        const auto now = t0 + std::chrono::milliseconds(ms);
        one.guest_io(now, lat);
        if (ms % 10 == 9)
            bulk.guest_ios(now, 10, 10 * std::chrono::nanoseconds(lat));
        CHECK(one.budget(now) == bulk.budget(now));
    }
    CHECK(bulk.base() == 500us);
    CHECK(bulk.budget(t0 + 1000ms) == MiB);   // halved down to one step above the base
}
