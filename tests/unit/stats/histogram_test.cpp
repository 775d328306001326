// SPDX-License-Identifier: MIT
// Latency histograms (QEMU's qapi/block-core.json, block-latency-histogram-set).
#include "bjd/stats/block_acct.hpp"

#include "stats_test_util.hpp"

#include <catch2/catch.hpp>

#include <vector>

using namespace bjd::stats;
using namespace bjd::stats::test;

namespace {

std::vector<std::uint64_t> v(std::initializer_list<std::uint64_t> l) { return l; }

} // namespace

TEST_CASE("stats: histogram bins are half-open [b(i-1), b(i))", "[stats]")
{
    manual_clock clk(0);
    block_acct a(clk, nullptr);
    REQUIRE(a.set_histogram(op::read, v({10, 20})));
    for (std::int64_t lat : {0, 9, 10, 19, 20, 1000})
        issue(a, clk, op::read, 512, lat);
    auto s = a.read();
    REQUIRE(s.histograms[0]);
    CHECK(s.histograms[0]->boundaries == v({10, 20}));
    CHECK(s.histograms[0]->bins == v({2, 2, 2}));
    CHECK_FALSE(s.histograms[1]);
    CHECK_FALSE(s.histograms[2]);
}

TEST_CASE("stats: histograms count failed requests even without account_failed", "[stats]")
{
    manual_clock clk(0);
    block_acct a(clk, nullptr);
    a.set_account_failed(false);
    REQUIRE(a.set_histogram(op::write, v({100})));
    REQUIRE(a.set_histogram(op::flush, v({100})));
    issue(a, clk, op::write, 512, 50, false);
    issue(a, clk, op::write, 512, 150, true);
    issue(a, clk, op::flush, 0, 500, false);
    a.invalid(op::write);   // no latency, no bin
    auto s = a.read();
    CHECK(s.histograms[1]->bins == v({1, 1}));
    CHECK(s.histograms[2]->bins == v({0, 1}));
    CHECK(s[op::write].total_time_ns == 150);
}

TEST_CASE("stats: histogram boundaries are validated; setting resets, clearing removes", "[stats]")
{
    manual_clock clk(0);
    block_acct a(clk, nullptr);
    REQUIRE(a.set_histogram(op::read, v({5})));
    issue(a, clk, op::read, 512, 7);

    SECTION("invalid lists change nothing")
    {
        CHECK_FALSE(a.set_histogram(op::read, v({0, 5})));
        CHECK_FALSE(a.set_histogram(op::read, v({5, 5})));
        CHECK_FALSE(a.set_histogram(op::read, v({9, 3})));
        auto s = a.read();
        CHECK(s.histograms[0]->boundaries == v({5}));
        CHECK(s.histograms[0]->bins == v({0, 1}));
    }
    SECTION("a new list zeroes the bins")
    {
        REQUIRE(a.set_histogram(op::read, v({5})));
        CHECK(a.read().histograms[0]->bins == v({0, 0}));
    }
    SECTION("an empty list is one bin")
    {
        REQUIRE(a.set_histogram(op::read, {}));
        issue(a, clk, op::read, 512, 7);
        CHECK(a.read().histograms[0]->bins == v({1}));
    }
    SECTION("clearing")
    {
        REQUIRE(a.set_histogram(op::flush, v({5})));
        a.clear_histogram(op::read);
        auto s = a.read();
        CHECK_FALSE(s.histograms[0]);
        CHECK(s.histograms[2]);
        a.clear_histograms();
        CHECK_FALSE(a.read().histograms[2]);
        issue(a, clk, op::read, 512, 7);   // no histogram: nothing to count into
        CHECK(a.read()[op::read].operations == 2);
    }
}

TEST_CASE("stats: histograms carry their latency sum and start time", "[stats]")
{
    manual_clock clk(0);
    block_acct a(clk, nullptr);
    a.set_account_failed(false);   // the sum follows the bins, not total_time_ns
    const std::int64_t before = realtime_ns();
    REQUIRE(a.set_histogram(op::read, v({10, 20})));
    const std::int64_t after = realtime_ns();
    for (std::int64_t lat : {0, 9, 10, 19, 20, 1000})
        issue(a, clk, op::read, 512, lat);
    issue(a, clk, op::read, 512, 5, false);
    auto s = a.read();
    REQUIRE(s.histograms[0]);
    CHECK(s.histograms[0]->sum_ns == 0 + 9 + 10 + 19 + 20 + 1000 + 5);
    CHECK(s[op::read].total_time_ns == 0 + 9 + 10 + 19 + 20 + 1000);
    const std::int64_t first = s.histograms[0]->start_time_ns;
    CHECK(first >= before);
    CHECK(first <= after);
    CHECK(first >= s.start_time_ns);   // the counters started with the object, before

    SECTION("setting again restarts bins, sum and start time")
    {
        while (realtime_ns() == first) {
        }
        REQUIRE(a.set_histogram(op::read, v({10, 20})));
        auto t = a.read();
        CHECK(t.histograms[0]->bins == v({0, 0, 0}));
        CHECK(t.histograms[0]->sum_ns == 0);
        CHECK(t.histograms[0]->start_time_ns != first);
        CHECK(t.start_time_ns == s.start_time_ns);   // the node's counters go on
    }
}
