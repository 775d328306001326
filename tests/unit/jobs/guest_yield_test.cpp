// SPDX-License-Identifier: MIT
// How much a copy may have in flight while guests use its source (bjd/jobs/guest_yield.hpp),
// fed made-up latencies: time is a number here, not a clock reading.
#include "bjd/jobs/guest_yield.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <functional>

using bjd::jobs::guest_yield;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t MiB = 1 << 20;

guest_yield::clock::time_point at(std::chrono::milliseconds ms)
{
    return guest_yield::clock::time_point{} + 1h + ms;
}

guest_yield make() { return guest_yield(MiB, 16 * MiB, {.window = 50ms, .slack = 0.2, .base_memory = 10s}); }

/// Runs `ms` milliseconds from `from`: each millisecond a guest request completes with the
/// latency `latency(budget)` gives for the budget in force; returns the last budget.
std::uint64_t run(guest_yield& y, int from, int ms, const std::function<std::chrono::microseconds(std::uint64_t)>& latency)
{
    std::uint64_t b = 0;
    for (int t = from; t < from + ms; ++t) {
        b = y.budget(at(std::chrono::milliseconds(t)));
        y.guest_io(at(std::chrono::milliseconds(t)), latency(b));
    }
    return y.budget(at(std::chrono::milliseconds(from + ms)));
}

} // namespace

TEST_CASE("guest_yield: no guest, the whole buffer", "[mirror][yield]")
{
    auto y = make();
    for (int t = 0; t < 1000; t += 10)
        CHECK(y.budget(at(std::chrono::milliseconds(t))) == 16 * MiB);
    CHECK(y.base() == 0ns);
}

TEST_CASE("guest_yield: the copy backs off to where guests keep their latency", "[mirror][yield]")
{
    auto y = make();
    // A disk on which every MiB the copy has in flight adds 100 us to a guest's 500 us.
    auto disk = [](std::uint64_t budget) { return 500us + 100us * static_cast<long>(budget / MiB); };
    // Guests arrive: the first window still sees the whole buffer, then the copy starts over
    // from one request.
    run(y, 0, 60, disk);
    CHECK(y.budget(at(60ms)) == MiB);
    // Then it settles where guests' latency stays within about 20 % of the base (600 us at
    // 1 MiB in flight): between 1 and 4 MiB, never near the whole buffer.
    std::uint64_t most = 0;
    std::chrono::microseconds total{};
    int n = 0;
    auto measured = [&](std::uint64_t budget) {
        auto l = disk(budget);
        total += l;
        ++n;
        return l;
    };
    for (int t = 60; t < 5000; t += 50)
        most = std::max(most, run(y, t, 50, measured));
    CHECK(most >= 2 * MiB);
    CHECK(most < 4 * MiB);
    CHECK(y.base() == 600us);
    CHECK(total / n <= 720us);
}

TEST_CASE("guest_yield: a copy that does not slow guests grows to the whole buffer", "[mirror][yield]")
{
    auto y = make();
    auto unaffected = [](std::uint64_t) { return 800us; };
    run(y, 0, 60, unaffected);
    CHECK(y.budget(at(60ms)) == MiB);
    // One MiB more per 50 ms window: 15 windows to 16 MiB.
    CHECK(run(y, 60, 800, unaffected) == 16 * MiB);
}

TEST_CASE("guest_yield: a latency jump halves the budget, an idle window restores it", "[mirror][yield]")
{
    // Windows close every 50 ms from 0: each run below starts and ends on a window's edge.
    auto y = make();
    auto unaffected = [](std::uint64_t) { return 800us; };
    auto slow = [](std::uint64_t) { return 2000us; };
    CHECK(run(y, 0, 50, unaffected) == MiB);
    CHECK(run(y, 50, 800, unaffected) == 16 * MiB);   // one MiB more per window
    CHECK(run(y, 850, 50, slow) == 8 * MiB);
    CHECK(run(y, 900, 50, slow) == 4 * MiB);
    // Nobody for a whole window: nobody is waiting behind the copy.
    CHECK(y.budget(at(1000ms)) == 16 * MiB);
    // The base is remembered: guests coming back are judged against it at once.
    CHECK(run(y, 1000, 50, slow) == 8 * MiB);
}

TEST_CASE("guest_yield: the base is the lowest window of the last base_memory", "[mirror][yield]")
{
    auto y = make();
    run(y, 0, 50, [](std::uint64_t) { return 300us; });
    run(y, 50, 100, [](std::uint64_t) { return 500us; });
    CHECK(y.base() == 300us);
    // More than 10 s later the 300 us window is forgotten: the base is what guests see now.
    CHECK(y.budget(at(11'000ms)) == 16 * MiB);   // idle meanwhile
    run(y, 11'000, 200, [](std::uint64_t) { return 700us; });
    CHECK(y.base() == 700us);
}

TEST_CASE("guest_yield: new limits when the copy's window changes", "[mirror][yield]")
{
    auto y = make();
    // No guests: the whole buffer, old or new.
    CHECK(y.budget(at(0ms)) == 16 * MiB);
    y.resize(2 * MiB, 32 * MiB);
    CHECK(y.budget(at(1ms)) == 32 * MiB);
    y.resize(MiB, 16 * MiB);
    CHECK(y.budget(at(2ms)) == 16 * MiB);
    // Guests held the copy back to a few requests: it stays held back, in the new step's terms.
    run(y, 100, 200, [](std::uint64_t) { return 1000us; });
    const auto held = y.budget(at(300ms));
    REQUIRE(held < 16 * MiB);
    y.resize(4 * MiB, 64 * MiB);
    CHECK(y.budget(at(301ms)) == std::max<std::uint64_t>(held, 4 * MiB));
}
