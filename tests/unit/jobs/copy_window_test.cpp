// SPDX-License-Identifier: MIT
// How much a copy keeps in flight when buf-size is left to the daemon
// (bjd/jobs/copy_window.hpp), fed made-up disks: time is a number here, not a clock reading.
#include "bjd/jobs/copy_window.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <functional>

using bjd::jobs::copy_window;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t MiB = 1 << 20;

copy_window make(std::uint64_t start = 16 * MiB, std::uint64_t max = 64 * MiB)
{
    return copy_window(start, max,
                       {.period = 200ms, .settle = 100ms, .gain = 0.1, .reprobe = 30s, .give_up = 2s, .first_probe = 0s});
}

/// A disk that copies at `rate(window, t)` bytes per second. Runs the copy for `span` from `t`,
/// 16 requests per window, each completing with the window full; returns the decisions taken.
int run(copy_window& w, std::chrono::nanoseconds& t, std::chrono::nanoseconds span,
        const std::function<double(std::uint64_t, double)>& rate)
{
    int decisions = 0;
    const auto end = t + span;
    while (t < end) {
        const std::uint64_t req = w.size() / 16;
        const double r = rate(w.size(), std::chrono::duration<double>(t).count());
        t += std::chrono::nanoseconds(static_cast<std::int64_t>(static_cast<double>(req) / r * 1e9));
        const auto now = copy_window::clock::time_point{} + 1h + t;
        w.in_flight(now, w.size());
        if (w.completed(now, req))
            ++decisions;
    }
    return decisions;
}

/// Latency-bound up to `cap` bytes per second: each window's worth takes 20 ms.
std::function<double(std::uint64_t, double)> bounded(double cap)
{
    return [cap](std::uint64_t window, double) { return std::min(cap, static_cast<double>(window) / 0.020); };
}

std::function<double(std::uint64_t, double)> flat(double rate)
{
    return [rate](std::uint64_t, double) { return rate; };
}

} // namespace

TEST_CASE("copy_window: a window the user set never moves", "[mirror][window]")
{
    auto w = make(16 * MiB, 16 * MiB);
    std::chrono::nanoseconds t{};
    CHECK(run(w, t, 60s, bounded(1e12)) == 0);
    CHECK(w.size() == 16 * MiB);
}

TEST_CASE("copy_window: grows while the copy gets faster, and keeps the last size that helped", "[mirror][window]")
{
    // 16 MiB in flight: 800 MiB/s; 32 MiB: 1000 (the disk's limit); 64 MiB: 1000 as well.
    auto w = make();
    std::chrono::nanoseconds t{};
    const auto disk = bounded(1000.0 * MiB);
    run(w, t, 10s, disk);
    CHECK(w.size() == 32 * MiB);
    // The last decision was the rejected probe at 64 MiB.
    const auto& d = w.last_decision();
    CHECK(d.from == 32 * MiB);
    CHECK(d.tried == 64 * MiB);
    CHECK(d.to == 32 * MiB);
    CHECK(d.rate_tried < d.rate_before * 1.1);
    // It stays there: no decision until the next probe is due.
    CHECK(run(w, t, 15s, disk) == 0);
    CHECK(w.size() == 32 * MiB);
}

TEST_CASE("copy_window: a disk that keeps gaining gets the whole maximum", "[mirror][window]")
{
    auto w = make();
    std::chrono::nanoseconds t{};
    run(w, t, 5s, bounded(1e12));
    CHECK(w.size() == 64 * MiB);
    CHECK(w.last_decision().to == 64 * MiB);
    CHECK(w.last_decision().rate_tried > w.last_decision().rate_before * 1.9);
}

TEST_CASE("copy_window: a copy shorter than the first probe's delay keeps its window", "[mirror][window]")
{
    // A disk that gains from any depth: the window grows, but not before a second of copying.
    auto w = copy_window(16 * MiB, 64 * MiB, {.first_probe = 1s});
    std::chrono::nanoseconds t{};
    CHECK(run(w, t, 900ms, bounded(1e12)) == 0);
    CHECK(w.size() == 16 * MiB);
    run(w, t, 3s, bounded(1e12));
    CHECK(w.size() == 64 * MiB);
}

TEST_CASE("copy_window: a disk that gains nothing keeps QEMU's window", "[mirror][window]")
{
    auto w = make();
    std::chrono::nanoseconds t{};
    CHECK(run(w, t, 10s, flat(700.0 * MiB)) == 1);
    CHECK(w.size() == 16 * MiB);
    CHECK(w.last_decision().tried == 32 * MiB);
}

TEST_CASE("copy_window: periods in which the window was not the limit do not count", "[mirror][window]")
{
    // A quarter of the window in flight: the speed limit, guests or the end of the dirty data
    // held the copy back, so its rate says nothing about the window.
    auto w = make();
    std::chrono::nanoseconds t{};
    const auto now = [&t] { return copy_window::clock::time_point{} + 1h + t; };
    for (int i = 0; i < 10000; ++i, t += 1ms) {
        w.in_flight(now(), 4 * MiB);
        CHECK_FALSE(w.completed(now(), MiB));
    }
    CHECK(w.size() == 16 * MiB);
}

TEST_CASE("copy_window: a disk that answers the whole window at once is still measured", "[mirror][window]")
{
    // 16 requests complete together every 20 ms, and the copy refills the window 50 us later.
    // At the last completion of each batch the window is empty, for a moment: the period still
    // counts (it did not when every completion had to find half the window in flight, and a
    // probe was then never judged).
    auto w = make();
    std::chrono::nanoseconds t{};
    const auto now = [&t] { return copy_window::clock::time_point{} + 1h + t; };
    int decisions = 0;
    while (t < 2s) {
        // 16 MiB take 20 ms (800 MiB/s), 32 MiB as long (1600), 64 MiB twice as long (1600).
        const std::uint64_t size = w.size(), req = size / 16;
        t += 20ms * static_cast<int>(std::max<std::uint64_t>(1, size / (32 * MiB)));
        for (std::uint64_t left = size; left > 0; left -= req) {
            w.in_flight(now(), left - req);
            if (w.completed(now(), req)) {
                ++decisions;
                INFO(w.last_decision().from << " " << w.last_decision().tried << " " << w.last_decision().to);
                CHECK(w.last_decision().measured);
            }
        }
        t += 50us;
        w.in_flight(now(), w.size());
    }
    CHECK(decisions == 2);   // 32 MiB kept, 64 MiB tried and not kept
    CHECK(w.size() == 32 * MiB);
}

TEST_CASE("copy_window: a probe that cannot be measured ends at the smaller window", "[mirror][window]")
{
    auto w = make();
    std::chrono::nanoseconds t{};
    const auto now = [&t] { return copy_window::clock::time_point{} + 1h + t; };
    run(w, t, 260ms, bounded(1000.0 * MiB));   // measured at 16 MiB, now trying 32
    REQUIRE(w.size() == 32 * MiB);
    // From now on the copy keeps a quarter of the window in flight: no period counts.
    int decisions = 0;
    for (int i = 0; i < 3000; ++i, t += 1ms) {
        w.in_flight(now(), 8 * MiB);
        decisions += w.completed(now(), 2 * MiB) ? 1 : 0;
    }
    CHECK(decisions == 1);
    CHECK(w.size() == 16 * MiB);
    CHECK_FALSE(w.last_decision().measured);
    CHECK(w.last_decision().tried == 32 * MiB);
    CHECK(w.last_decision().to == 16 * MiB);
}

TEST_CASE("copy_window: a disk that speeds up later is probed again", "[mirror][window]")
{
    auto w = make();
    std::chrono::nanoseconds t{};
    run(w, t, 10s, flat(700.0 * MiB));
    REQUIRE(w.size() == 16 * MiB);
    // Now the disk rewards depth; within the reprobe interval nothing changes.
    run(w, t, 15s, bounded(1e12));
    CHECK(w.size() == 16 * MiB);
    run(w, t, 10s, bounded(1e12));
    CHECK(w.size() == 64 * MiB);
}

TEST_CASE("copy_window: a disk that slows down during the copy does not hide a real gain", "[mirror][window]")
{
    // 32 MiB in flight is 1.25x faster than 16 at any moment, while the disk loses half its
    // pace each second (a cache absorbing the first writes, say). B comes after A: alone, A
    // would look as fast as B. A' after B is what shows the gain.
    auto w = make();
    std::chrono::nanoseconds t{};
    const auto slowing = [disk = bounded(1000.0 * MiB)](std::uint64_t window, double secs) {
        return disk(window, secs) * std::max(0.1, 1.0 - 0.5 * secs);
    };
    run(w, t, 2s, slowing);
    CHECK(w.size() == 32 * MiB);
}

TEST_CASE("copy_window: a disk that speeds up during the copy does not fake a gain", "[mirror][window]")
{
    auto w = make();
    std::chrono::nanoseconds t{};
    CHECK(run(w, t, 5s, [](std::uint64_t, double secs) { return 700.0 * MiB * (1.0 + 0.5 * secs); }) == 1);
    CHECK(w.size() == 16 * MiB);
    CHECK(w.last_decision().tried == 32 * MiB);
}
