// SPDX-License-Identifier: MIT
// The timed-statistics window algorithm (QEMU's util/timed-average.c), driven by a manual clock.
//
// interval 3 s → P = 4 s; window 0 expires at 2, 6, 10… s, window 1 at 4, 8, 12… s after
// configuration; queries read the window expiring first.
#include "bjd/stats/block_acct.hpp"

#include "stats_test_util.hpp"

#include <catch2/catch.hpp>

#include <vector>

using namespace bjd::stats;
using namespace bjd::stats::test;

namespace {

std::vector<std::uint32_t> iv(std::initializer_list<std::uint32_t> l) { return l; }

} // namespace

TEST_CASE("stats: timed statistics follow the two-window schedule", "[stats]")
{
    manual_clock clk(100 * sec);   // an arbitrary epoch: windows are relative to configuration
    block_acct a(clk, nullptr);
    a.set_intervals(iv({3}));
    const std::int64_t t0 = clk.now_ns();

    SECTION("fresh interval: all zero")
    {
        auto s = a.read();
        REQUIRE(s.timed.size() == 1);
        CHECK(s.timed[0].interval_length == 3);
        CHECK(s.timed[0].rd.min_ns == 0);
        CHECK(s.timed[0].rd.max_ns == 0);
        CHECK(s.timed[0].rd.avg_ns == 0);
        CHECK(s.timed[0].avg_rd_queue_depth == 0.0);
    }
    SECTION("a sample is visible until both windows that saw it have expired")
    {
        clk.set(t0 + 1 * sec - 2 * ms);
        issue(a, clk, op::read, 4096, 2 * ms);   // completes at t0+1 s
        issue(a, clk, op::read, 4096, 4 * ms);   // completes at t0+1.004 s

        auto s = a.read();   // oldest: window 0 (expires t0+2 s), elapsed = 4 − 0.996 s
        CHECK(s.timed[0].rd.min_ns == 2 * ms);
        CHECK(s.timed[0].rd.max_ns == 4 * ms);
        CHECK(s.timed[0].rd.avg_ns == 3 * ms);
        CHECK(s.timed[0].avg_rd_queue_depth == Approx(6.0 * ms / (3004.0 * ms)));
        CHECK(s.timed[0].wr.max_ns == 0);

        clk.set(t0 + 2 * sec);   // window 0 expires (expiry <= now); window 1 (t0+4 s) is oldest
        s = a.read();
        CHECK(s.timed[0].rd.max_ns == 4 * ms);
        CHECK(s.timed[0].avg_rd_queue_depth == Approx(6.0 * ms / (2.0 * sec)));

        clk.set(t0 + 4 * sec - 1);
        CHECK(a.read().timed[0].rd.avg_ns == 3 * ms);

        clk.set(t0 + 4 * sec);   // window 1 gone; window 0 was reset at 2 s: empty
        s = a.read();
        CHECK(s.timed[0].rd.min_ns == 0);
        CHECK(s.timed[0].rd.max_ns == 0);
        CHECK(s.timed[0].rd.avg_ns == 0);
        CHECK(s.timed[0].avg_rd_queue_depth == 0.0);
    }
    SECTION("a sample after the first roll lives in the reset window too")
    {
        clk.set(t0 + 3 * sec);
        a.roll(clk.now_ns());   // what the stats thread does at t0+2 s
        issue(a, clk, op::write, 512, 1 * ms);
        clk.set(t0 + 5 * sec);   // window 1 expired at 4 s; window 0 (expires 6 s) has it
        auto s = a.read();
        CHECK(s.timed[0].wr.min_ns == 1 * ms);
        CHECK(s.timed[0].wr.max_ns == 1 * ms);
        CHECK(s.timed[0].avg_wr_queue_depth == Approx(1.0 * ms / (3.0 * sec)));
        clk.set(t0 + 6 * sec);
        CHECK(a.read().timed[0].wr.max_ns == 0);
    }
    SECTION("a long silence skips whole periods")
    {
        issue(a, clk, op::flush, 0, 1 * ms);
        clk.set(t0 + 41 * sec);
        auto s = a.read();
        CHECK(s.timed[0].flush.max_ns == 0);
        issue(a, clk, op::flush, 0, 9 * ms);
        s = a.read();
        CHECK(s.timed[0].flush.min_ns == 9 * ms);
        CHECK(s.timed[0].flush.max_ns == 9 * ms);
    }
}

TEST_CASE("stats: timed statistics respect account_failed and ignore invalid requests", "[stats]")
{
    manual_clock clk(0);
    block_acct a(clk, nullptr);
    a.set_intervals(iv({10}));

    SECTION("account_failed on")
    {
        issue(a, clk, op::read, 512, 1 * ms);
        issue(a, clk, op::read, 512, 5 * ms, false);
        auto s = a.read();
        CHECK(s.timed[0].rd.max_ns == 5 * ms);
        CHECK(s.timed[0].rd.avg_ns == 3 * ms);
    }
    SECTION("account_failed off")
    {
        a.set_account_failed(false);
        issue(a, clk, op::read, 512, 1 * ms);
        issue(a, clk, op::read, 512, 5 * ms, false);
        a.invalid(op::read);
        auto s = a.read();
        CHECK(s.timed[0].rd.max_ns == 1 * ms);
        CHECK(s.timed[0].rd.avg_ns == 1 * ms);
    }
    SECTION("unmap has no timed statistics")
    {
        issue(a, clk, op::unmap, 512, 5 * ms);
        auto s = a.read();
        CHECK(s.timed[0].rd.max_ns == 0);
        CHECK(s.timed[0].wr.max_ns == 0);
        CHECK(s.timed[0].flush.max_ns == 0);
    }
}

TEST_CASE("stats: several intervals are independent and keep configuration order", "[stats]")
{
    manual_clock clk(0);
    block_acct a(clk, nullptr);
    a.set_intervals(iv({60, 1, 10}));
    CHECK(a.intervals() == iv({60, 1, 10}));
    issue(a, clk, op::write, 512, 2 * ms);
    clk.set(2 * sec);   // 1 s interval: P = 1.333 s, both windows expired by now
    auto s = a.read();
    REQUIRE(s.timed.size() == 3);
    CHECK(s.timed[0].interval_length == 60);
    CHECK(s.timed[1].interval_length == 1);
    CHECK(s.timed[2].interval_length == 10);
    CHECK(s.timed[0].wr.max_ns == 2 * ms);
    CHECK(s.timed[1].wr.max_ns == 0);
    CHECK(s.timed[2].wr.max_ns == 2 * ms);

    a.set_intervals(iv({5}));   // reconfiguring starts afresh
    s = a.read();
    REQUIRE(s.timed.size() == 1);
    CHECK(s.timed[0].wr.max_ns == 0);
    a.set_intervals({});
    CHECK(a.read().timed.empty());
}

TEST_CASE("stats: next_due_ns reports the earliest expiry", "[stats]")
{
    manual_clock clk(0);
    block_acct a(clk, nullptr);
    CHECK_FALSE(a.next_due_ns(0));
    a.set_intervals(iv({3}));
    CHECK(a.next_due_ns(0) == 2 * sec);
    CHECK(a.next_due_ns(2 * sec) == 4 * sec);
    CHECK(a.next_due_ns(5 * sec) == 6 * sec);
}

TEST_CASE("stats: the largest interval does not overflow", "[stats]")
{
    manual_clock clk(0);
    block_acct a(clk, nullptr);
    a.set_intervals(iv({4294967295u}));
    issue(a, clk, op::read, 512, 1 * ms);
    auto s = a.read();
    CHECK(s.timed[0].interval_length == 4294967295u);
    CHECK(s.timed[0].rd.max_ns == 1 * ms);
    CHECK(s.timed[0].avg_rd_queue_depth > 0.0);
}
