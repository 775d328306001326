// SPDX-License-Identifier: MIT
// The stats thread rolls windows without anyone querying.
#include "bjd/stats/service.hpp"
#include "bjd/stats/block_acct.hpp"

#include "stats_test_util.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <thread>
#include <vector>

using namespace bjd::stats;
using namespace bjd::stats::test;

namespace {

/// Waits (real time, bounded) until the thread has made a pass after `before`.
bool wait_pass(const service& svc, std::uint64_t before)
{
    for (int i = 0; i < 500; ++i) {
        if (svc.passes() > before)
            return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
}

} // namespace

TEST_CASE("stats: the service starts with the first interval and forgets dead objects", "[stats]")
{
    service svc;
    {
        block_acct a(monotonic_clock(), &svc);
        CHECK_FALSE(svc.running());
        CHECK(svc.size() == 0);
        a.set_intervals(std::vector<std::uint32_t>{1});
        CHECK(svc.running());
        CHECK(svc.size() == 1);
    }
    CHECK(svc.size() == 0);
}

TEST_CASE("stats: the service rolls windows at expiry on a real clock", "[stats]")
{
    service svc;
    block_acct a(monotonic_clock(), &svc);
    a.set_intervals(std::vector<std::uint32_t>{1});   // P = 1.333 s: expiries at 0.667 s, 1.333 s
    auto p0 = svc.passes();
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    // Initial pass plus one per expiry (a loaded machine may merge two late expiries).
    CHECK(svc.passes() >= p0 + 2);
}

TEST_CASE("stats: samples go to the right window only if someone rolled on time", "[stats]")
{
    // interval 3 s, P = 4 s. Sample A at 1 s; window 0 expires at 2 s; sample B at 2.5 s;
    // at 4.5 s the oldest window is window 0 (expires 6 s), which must hold B alone.
    // Without a roll between 2 s and B, B would land in window 0's stale buffer and be lost.
    manual_clock clk(0);
    service svc(clk);
    block_acct a(clk, &svc);
    a.set_intervals(std::vector<std::uint32_t>{3});
    clk.set(1 * sec);
    issue(a, clk, op::read, 512, 1 * ms);
    clk.set(2500 * ms);
    auto before = svc.passes();
    svc.wake();
    REQUIRE(wait_pass(svc, before));
    issue(a, clk, op::read, 512, 7 * ms);
    clk.set(4500 * ms);
    auto s = a.read();
    CHECK(s.timed[0].rd.min_ns == 7 * ms);
    CHECK(s.timed[0].rd.max_ns == 7 * ms);
}
