// SPDX-License-Identifier: MIT
// Cumulative counters and the account_invalid / account_failed rules (QEMU's block/accounting.c).
#include "bjd/stats/block_acct.hpp"

#include "stats_test_util.hpp"

#include <catch2/catch.hpp>

#include <thread>
#include <vector>

using namespace bjd::stats;
using namespace bjd::stats::test;

TEST_CASE("stats: fresh counters are zero and idle time is absent", "[stats]")
{
    manual_clock clk(5 * sec);
    block_acct a(clk, nullptr);
    auto s = a.read();
    for (const auto& o : s.ops) {
        CHECK(o.bytes == 0);
        CHECK(o.operations == 0);
        CHECK(o.failed == 0);
        CHECK(o.invalid == 0);
        CHECK(o.total_time_ns == 0);
    }
    CHECK_FALSE(s.idle_time_ns);
    CHECK(s.account_invalid);
    CHECK(s.account_failed);
    CHECK(s.timed.empty());
    CHECK_FALSE(s.histograms[0]);
    CHECK(s.start_time_ns > 0);
    CHECK(s.start_time_ns <= realtime_ns());
}

TEST_CASE("stats: successful requests count bytes, operations and latency per type", "[stats]")
{
    manual_clock clk(1 * sec);
    block_acct a(clk, nullptr);
    issue(a, clk, op::read, 4096, 2 * ms);
    issue(a, clk, op::read, 512, 1 * ms);
    issue(a, clk, op::write, 65536, 3 * ms);
    issue(a, clk, op::flush, 0, 5 * ms);
    issue(a, clk, op::unmap, 1 << 20, 7 * ms);
    a.merged(op::write, 3);
    clk.advance(10 * ms);

    auto s = a.read();
    CHECK(s[op::read].bytes == 4608);
    CHECK(s[op::read].operations == 2);
    CHECK(s[op::read].total_time_ns == 3 * ms);
    CHECK(s[op::write].bytes == 65536);
    CHECK(s[op::write].operations == 1);
    CHECK(s[op::write].merged == 3);
    CHECK(s[op::write].total_time_ns == 3 * ms);
    CHECK(s[op::flush].operations == 1);
    CHECK(s[op::flush].total_time_ns == 5 * ms);
    CHECK(s[op::unmap].bytes == 1 << 20);
    CHECK(s[op::unmap].operations == 1);
    CHECK(s[op::unmap].total_time_ns == 7 * ms);
    REQUIRE(s.idle_time_ns);
    CHECK(*s.idle_time_ns == 10 * ms);
}

TEST_CASE("stats: failed requests and account_failed", "[stats]")
{
    manual_clock clk(1 * sec);
    block_acct a(clk, nullptr);

    SECTION("account_failed on: latency and idle time include failures")
    {
        issue(a, clk, op::write, 4096, 4 * ms, false);
        clk.advance(1 * ms);
        auto s = a.read();
        CHECK(s[op::write].failed == 1);
        CHECK(s[op::write].operations == 0);
        CHECK(s[op::write].bytes == 0);
        CHECK(s[op::write].total_time_ns == 4 * ms);
        REQUIRE(s.idle_time_ns);
        CHECK(*s.idle_time_ns == 1 * ms);
    }
    SECTION("account_failed off: counted as failed, no latency, no idle time")
    {
        a.set_account_failed(false);
        issue(a, clk, op::read, 4096, 4 * ms, false);
        issue(a, clk, op::flush, 0, 4 * ms, false);
        auto s = a.read();
        CHECK_FALSE(s.account_failed);
        CHECK(s[op::read].failed == 1);
        CHECK(s[op::flush].failed == 1);
        CHECK(s[op::read].total_time_ns == 0);
        CHECK(s[op::flush].total_time_ns == 0);
        CHECK_FALSE(s.idle_time_ns);
    }
}

TEST_CASE("stats: invalid requests and account_invalid", "[stats]")
{
    manual_clock clk(1 * sec);
    block_acct a(clk, nullptr);

    SECTION("account_invalid on: idle time starts at the rejection")
    {
        a.invalid(op::write);
        a.invalid(op::read);
        a.invalid(op::unmap);
        clk.advance(3 * ms);
        auto s = a.read();
        CHECK(s[op::write].invalid == 1);
        CHECK(s[op::read].invalid == 1);
        CHECK(s[op::unmap].invalid == 1);
        CHECK(s[op::flush].invalid == 0);
        CHECK(s[op::write].total_time_ns == 0);
        REQUIRE(s.idle_time_ns);
        CHECK(*s.idle_time_ns == 3 * ms);
    }
    SECTION("account_invalid off: counted, idle time stays absent")
    {
        a.set_account_invalid(false);
        a.invalid(op::read);
        auto s = a.read();
        CHECK_FALSE(s.account_invalid);
        CHECK(s[op::read].invalid == 1);
        CHECK_FALSE(s.idle_time_ns);
    }
}

TEST_CASE("stats: wr_highest_offset keeps the maximum end", "[stats]")
{
    block_acct a(monotonic_clock(), nullptr);
    a.note_write_end(8192);
    a.note_write_end(4096);
    CHECK(a.read().wr_highest_offset == 8192);
}

TEST_CASE("stats: the disable switch makes accounting inert", "[stats]")
{
    manual_clock clk(1 * sec);
    block_acct a(clk, nullptr);
    set_accounting_enabled(false);
    issue(a, clk, op::read, 4096, 1 * ms);
    a.invalid(op::read);
    set_accounting_enabled(true);
    auto s = a.read();
    CHECK(s[op::read].operations == 0);
    CHECK(s[op::read].invalid == 0);
    CHECK_FALSE(s.idle_time_ns);
    issue(a, clk, op::read, 4096, 1 * ms);
    CHECK(a.read()[op::read].operations == 1);
}

TEST_CASE("stats: counters aggregate exactly across threads", "[stats]")
{
    // More threads than shards, so some shards have several writers.
    constexpr int threads = 24;
    constexpr int per_thread = 20000;
    block_acct a(monotonic_clock(), nullptr);
    a.set_intervals(std::vector<std::uint32_t>{60});
    std::vector<std::uint64_t> bounds{1, 1'000'000'000};
    REQUIRE(a.set_histogram(op::read, bounds));
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
        ts.emplace_back([&a, t] {
            for (int i = 0; i < per_thread; ++i) {
                a.done(a.start(op::read, 512));
                if (i % 4 == 0)
                    a.failed(a.start(op::write, 4096));
                a.note_write_end(std::uint64_t(t) * 1000 + 7);
            }
        });
    // Concurrent readers must not disturb the writers.
    for (int i = 0; i < 50; ++i)
        (void)a.read();
    for (auto& t : ts)
        t.join();
    auto s = a.read();
    CHECK(s[op::read].operations == std::uint64_t(threads) * per_thread);
    CHECK(s[op::read].bytes == std::uint64_t(threads) * per_thread * 512);
    CHECK(s[op::write].failed == std::uint64_t(threads) * per_thread / 4);
    CHECK(s[op::write].bytes == 0);
    CHECK(s.wr_highest_offset == std::uint64_t(threads - 1) * 1000 + 7);
    REQUIRE(s.histograms[0]);
    std::uint64_t binsum = 0;
    for (auto b : s.histograms[0]->bins)
        binsum += b;
    CHECK(binsum == std::uint64_t(threads) * per_thread);
    REQUIRE(s.timed.size() == 1);
    CHECK(s.timed[0].rd.max_ns >= s.timed[0].rd.min_ns);
}
