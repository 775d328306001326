// SPDX-License-Identifier: MIT
// The drained sections that transactions open for requests from outside the graph.
#include "bjd/block/io_gate.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <optional>

using namespace bjd;
namespace asio = boost::asio;

TEST_CASE("io_gate: a drain waits for requests in flight and holds new ones", "[block]")
{
    asio::io_context io;
    block::io_gate gate;
    std::optional<block::io_gate::pass> first;
    std::optional<block::io_gate::section> section;
    bool second_in = false;
    auto poll = [&] {
        io.restart();   // poll() stops the context once it runs out of work
        io.poll();
    };

    asio::co_spawn(io, [&]() -> asio::awaitable<void> { first.emplace(co_await gate.enter()); }, asio::detached);
    poll();
    REQUIRE(first);
    CHECK(gate.in_flight() == 1);

    asio::co_spawn(io, [&]() -> asio::awaitable<void> { section.emplace(co_await gate.drain()); }, asio::detached);
    poll();
    CHECK(gate.closed());
    CHECK_FALSE(section);   // the request in flight has not finished
    CHECK_FALSE(gate.try_enter());   // no way past a closed gate without waiting

    asio::co_spawn(io, [&]() -> asio::awaitable<void> {
        auto p = co_await gate.enter();
        second_in = true;
    }, asio::detached);
    poll();
    CHECK_FALSE(second_in);

    first.reset();   // the request finishes: the drain is complete, the new one still waits
    poll();
    REQUIRE(section);
    CHECK(gate.in_flight() == 0);
    CHECK_FALSE(second_in);

    section.reset();   // the section ends: the held request goes on
    poll();
    CHECK(second_in);
    CHECK_FALSE(gate.closed());
    CHECK(gate.in_flight() == 0);
    {
        auto quick = gate.try_enter();   // an open gate lets a request in at once
        REQUIRE(quick);
        CHECK(gate.in_flight() == 1);
    }
    CHECK(gate.in_flight() == 0);
}
