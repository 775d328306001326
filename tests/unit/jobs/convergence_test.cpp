// SPDX-License-Identifier: MIT
// The stall rule of copy-mode auto (bjd/jobs/convergence.hpp), fed made-up samples: time is
// a number here, not a clock reading, so nothing depends on how fast the test runs.
#include "bjd/jobs/convergence.hpp"

#include <catch2/catch.hpp>

#include <chrono>

using bjd::jobs::convergence_watch;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t MiB = 1 << 20;

convergence_watch::clock::time_point at(std::chrono::milliseconds ms)
{
    return convergence_watch::clock::time_point{} + 1h + ms;
}

convergence_watch make() { return convergence_watch({.window = 5s, .min_drop = 0.10}); }

} // namespace

TEST_CASE("convergence_watch: a shrinking remainder never stalls", "[mirror][auto]")
{
    auto w = make();
    std::uint64_t left = 1024 * MiB;
    for (int t = 0; t <= 60'000; t += 100) {
        CHECK_FALSE(w.sample(at(std::chrono::milliseconds(t)), left));
        left = left * 97 / 100;   // 3 % per 100 ms: 10 % well within any 5 s
    }
}

TEST_CASE("convergence_watch: a remainder wobbling around a level stalls after the window", "[mirror][auto]")
{
    auto w = make();
    // A busy writer's steady state: 40 MiB, a few chunks more or fewer from one sample to the
    // next. Every sample below the last one would be a "new minimum"; none is 10 % below.
    const std::uint64_t wobble[] = {40 * MiB, 39 * MiB, 41 * MiB, 38 * MiB, 40 * MiB, 37 * MiB};
    bool stalled = false;
    int when = -1;
    for (int t = 0; t <= 10'000 && !stalled; t += 100) {
        stalled = w.sample(at(std::chrono::milliseconds(t)), wobble[(t / 100) % 6]);
        if (stalled)
            when = t;
    }
    REQUIRE(stalled);
    CHECK(when == 5000);   // exactly one window after the first sample
    CHECK(w.level() == 40 * MiB);
    CHECK(w.open_for(at(5000ms)) == 5s);
}

TEST_CASE("convergence_watch: a growing remainder stalls", "[mirror][auto]")
{
    auto w = make();
    CHECK_FALSE(w.sample(at(0ms), 10 * MiB));
    CHECK_FALSE(w.sample(at(2000ms), 20 * MiB));
    CHECK_FALSE(w.sample(at(4999ms), 30 * MiB));
    CHECK(w.sample(at(5000ms), 40 * MiB));
}

TEST_CASE("convergence_watch: a drop of a tenth reopens the window", "[mirror][auto]")
{
    auto w = make();
    CHECK_FALSE(w.sample(at(0ms), 100 * MiB));
    CHECK_FALSE(w.sample(at(4000ms), 91 * MiB));   // 9 %: not progress
    CHECK_FALSE(w.sample(at(4500ms), 90 * MiB));   // 10 %: progress, new window at 90 MiB
    CHECK(w.level() == 90 * MiB);
    CHECK_FALSE(w.sample(at(9400ms), 89 * MiB));
    CHECK(w.sample(at(9500ms), 89 * MiB));
}

TEST_CASE("convergence_watch: converging slowly counts as stalled", "[mirror][auto]")
{
    // 1 % a second would take minutes: write-blocking is the better deal.
    auto w = make();
    std::uint64_t left = 100 * MiB;
    bool stalled = false;
    for (int t = 0; t <= 6000 && !stalled; t += 1000) {
        stalled = w.sample(at(std::chrono::milliseconds(t)), left);
        left = left * 99 / 100;
    }
    CHECK(stalled);
}

TEST_CASE("convergence_watch: reaching zero is progress, staying there is not", "[mirror][auto]")
{
    auto w = make();
    CHECK_FALSE(w.sample(at(0ms), 8 * MiB));
    CHECK_FALSE(w.sample(at(4000ms), 0));   // caught up: a new window at 0
    CHECK(w.level() == 0);
    // Clean again and again, a few chunks in between, but never READY (the mirror only asks
    // before READY): a writer lands in every flush of the target. That is a stall too.
    CHECK_FALSE(w.sample(at(5000ms), 64 * 1024));
    CHECK_FALSE(w.sample(at(6000ms), 0));
    CHECK_FALSE(w.sample(at(8999ms), 0));
    CHECK(w.sample(at(9000ms), 128 * 1024));
}

TEST_CASE("convergence_watch: suspended time does not count", "[mirror][auto]")
{
    auto w = make();
    CHECK_FALSE(w.sample(at(0ms), 50 * MiB));
    CHECK_FALSE(w.sample(at(3000ms), 50 * MiB));
    w.suspend();   // paused from 3 s to 60 s
    CHECK(w.open_for(at(60'000ms)) == 0s);
    CHECK_FALSE(w.sample(at(60'000ms), 50 * MiB));   // a fresh window
    CHECK_FALSE(w.sample(at(64'999ms), 50 * MiB));
    CHECK(w.sample(at(65'000ms), 50 * MiB));
}
