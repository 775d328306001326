// SPDX-License-Identifier: MIT
// bjd::event_flag: notify_all wakes every waiter once, a cancelled wait ends (a timer raced
// against it with `||`), and destroying the flag ends the waits it still has.
#include "bjd/event_flag.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <memory>
#include <optional>

namespace asio = boost::asio;
using bjd::event_flag;
using namespace std::chrono_literals;

namespace {

asio::awaitable<void> wait_on(event_flag& f, int& woken)
{
    co_await f.wait();
    ++woken;
}

} // namespace

TEST_CASE("event_flag: notify_all wakes every waiter, and only those waiting", "[common]")
{
    asio::io_context ctx;
    event_flag f(ctx.get_executor());
    int woken = 0;
    // The context runs out of work after each turn here: restart it for the next.
    auto turn = [&] {
        ctx.restart();
        ctx.poll();
    };
    for (int i = 0; i < 3; ++i)
        asio::co_spawn(ctx, wait_on(f, woken), asio::detached);
    turn();
    CHECK(woken == 0);
    f.notify_all();
    CHECK(woken == 0);   // posted, not run inline
    turn();
    CHECK(woken == 3);
    // A notify with nobody waiting is not remembered.
    f.notify_all();
    asio::co_spawn(ctx, wait_on(f, woken), asio::detached);
    turn();
    CHECK(woken == 3);
    f.notify_all();
    turn();
    CHECK(woken == 4);
}

TEST_CASE("event_flag: a wait raced against a timer ends when the timer wins", "[common]")
{
    using namespace asio::experimental::awaitable_operators;
    asio::io_context ctx;
    event_flag f(ctx.get_executor());
    int rounds = 0;
    bool flag_won = false;
    asio::co_spawn(
        ctx,
        [&]() -> asio::awaitable<void> {
            for (int i = 0; i < 3; ++i) {
                asio::steady_timer t(ctx, 1ms);
                auto r = co_await (t.async_wait(bjd::nothrow_awaitable) || f.wait());
                flag_won = flag_won || r.index() == 1;
                ++rounds;
            }
        },
        asio::detached);
    ctx.run_for(2s);
    CHECK(rounds == 3);
    CHECK_FALSE(flag_won);
    // The cancelled waits are gone: a notify now wakes nobody and touches nothing stale.
    f.notify_all();
    ctx.restart();
    ctx.poll();
}

TEST_CASE("event_flag: destroying the flag ends its waits", "[common]")
{
    asio::io_context ctx;
    int woken = 0;
    {
        std::optional<event_flag> f(std::in_place, ctx.get_executor());
        asio::co_spawn(ctx, wait_on(*f, woken), asio::detached);
        ctx.poll();
        CHECK(woken == 0);
        f.reset();
    }
    ctx.poll();
    CHECK(woken == 1);
}

TEST_CASE("event_flag: a loop's shutdown abandons the waits, even on a flag the waiter owns", "[common]")
{
    // A coroutine that keeps alive the object holding the flag it waits on (an NBD
    // connection's writer, a mirror's request) must not keep itself alive past the loop.
    struct owner {
        explicit owner(asio::any_io_executor ex) : flag(std::move(ex)) {}
        event_flag flag;
    };
    std::weak_ptr<owner> seen;
    {
        asio::io_context ctx;
        auto o = std::make_shared<owner>(ctx.get_executor());
        seen = o;
        asio::co_spawn(
            ctx, [o]() -> asio::awaitable<void> { co_await o->flag.wait(); }, asio::detached);
        o.reset();
        ctx.poll();
        CHECK_FALSE(seen.expired());   // waiting, held by its own coroutine
    }
    CHECK(seen.expired());
}
