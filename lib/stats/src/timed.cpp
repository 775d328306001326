// SPDX-License-Identifier: MIT
// Timed statistics (QEMU's util/timed-average.c): per interval two windows of period P = 4/3 × interval,
// offset by P/2; every accounted latency goes into both, queries read the one expiring first,
// which covers between 2/3 and 4/3 of the interval. Queue depth is Little's law: latency sum
// over the window's elapsed time.
#include "detail.hpp"

#include <algorithm>
#include <limits>

namespace bjd::stats::detail {

namespace {

/// P = interval × 4/3 without overflowing: interval_ns may be up to ~4.3e18.
std::int64_t period_of(std::uint32_t seconds) noexcept
{
    const std::uint64_t ns = std::uint64_t(seconds) * 1'000'000'000ull;
    return std::int64_t(ns / 3 * 4 + (ns % 3) * 4 / 3);
}

struct window_view {
    int w;
    std::int64_t gen;
    std::int64_t expiry;
};

/// The window a query reads at `now`: the one expiring first (QEMU picks window 1 on a tie).
window_view oldest(const timed_interval& iv, std::int64_t now) noexcept
{
    std::int64_t k0 = iv.gen_at(0, now), k1 = iv.gen_at(1, now);
    std::int64_t e0 = iv.expiry(0, k0), e1 = iv.expiry(1, k1);
    return e0 < e1 ? window_view{0, k0, e0} : window_view{1, k1, e1};
}

} // namespace

timed_set::~timed_set()
{
    for (auto& s : shards)
        delete[] s.load(std::memory_order_acquire);
}

timed_shard* timed_set::get(std::size_t idx) noexcept
{
    auto& slot = shards[idx];
    timed_shard* s = slot.load(std::memory_order_acquire);
    if (s)
        return s;
    auto* fresh = new timed_shard[intervals.size()];
    if (slot.compare_exchange_strong(s, fresh, std::memory_order_acq_rel))
        return fresh;
    delete[] fresh;
    return s;
}

void timed_set::add(std::size_t idx, unsigned type, std::uint64_t lat) noexcept
{
    timed_shard* cells = get(idx);
    for (std::size_t i = 0; i < intervals.size(); ++i) {
        const timed_interval& iv = *intervals[i];
        for (int w = 0; w < 2; ++w) {
            std::int64_t g = iv.gen[w].load(std::memory_order_acquire);
            cells[i].cell[w][g & 1][type].add(lat);
        }
    }
}

std::unique_ptr<timed_set> make_timed_set(std::span<const std::uint32_t> seconds, std::int64_t now)
{
    auto ts = std::make_unique<timed_set>();
    for (std::uint32_t s : seconds) {
        auto iv = std::make_unique<timed_interval>();
        iv->seconds = s;
        iv->period = period_of(s);
        iv->start = now;
        ts->intervals.push_back(std::move(iv));
    }
    return ts;
}

void roll_timed(timed_set& ts, std::int64_t now) noexcept
{
    for (std::size_t i = 0; i < ts.intervals.size(); ++i) {
        timed_interval& iv = *ts.intervals[i];
        for (int w = 0; w < 2; ++w) {
            const std::int64_t k = iv.gen_at(w, now);
            if (k == iv.gen[w].load(std::memory_order_relaxed))
                continue;
            // Clear the buffer generation k will use, then publish k: writers move over to a
            // clean buffer. (A writer that loaded the old generation just before may still
            // land one sample in the old buffer; nobody reads it any more.)
            for (auto& slot : ts.shards)
                if (timed_shard* cells = slot.load(std::memory_order_acquire))
                    for (auto& c : cells[i].cell[w][k & 1])
                        c.clear();
            iv.gen[w].store(k, std::memory_order_release);
        }
    }
}

std::optional<std::int64_t> next_due(const timed_set& ts, std::int64_t now) noexcept
{
    std::optional<std::int64_t> due;
    for (const auto& iv : ts.intervals)
        for (int w = 0; w < 2; ++w) {
            std::int64_t e = iv->expiry(w, iv->gen_at(w, now));
            due = due ? std::min(*due, e) : e;
        }
    return due;
}

std::vector<timed_totals> read_timed(const timed_set& ts, std::int64_t now)
{
    std::vector<timed_totals> out;
    constexpr auto rlx = std::memory_order_relaxed;
    for (std::size_t i = 0; i < ts.intervals.size(); ++i) {
        const timed_interval& iv = *ts.intervals[i];
        const window_view v = oldest(iv, now);
        // Caller rolled first, so the published generation is v.gen; if the stats thread
        // raced ahead (a later `now`), the window we would read no longer exists: report it
        // empty, which is what it is an instant later.
        const bool live = iv.gen[v.w].load(std::memory_order_acquire) == v.gen;

        std::uint64_t min[latency_op_count], max[latency_op_count] = {}, sum[latency_op_count] = {},
                                             cnt[latency_op_count] = {};
        std::fill(std::begin(min), std::end(min), std::numeric_limits<std::uint64_t>::max());
        if (live)
            for (const auto& slot : ts.shards) {
                const timed_shard* cells = slot.load(std::memory_order_acquire);
                if (!cells)
                    continue;
                for (unsigned t = 0; t < latency_op_count; ++t) {
                    const window_cell& c = cells[i].cell[v.w][v.gen & 1][t];
                    min[t] = std::min(min[t], c.min.load(rlx));
                    max[t] = std::max(max[t], c.max.load(rlx));
                    sum[t] += c.sum.load(rlx);
                    cnt[t] += c.count.load(rlx);
                }
            }
        auto summary = [&](unsigned t) {
            latency_summary s;
            s.min_ns = min[t] == std::numeric_limits<std::uint64_t>::max() ? 0 : min[t];
            s.max_ns = max[t];
            s.avg_ns = cnt[t] ? sum[t] / cnt[t] : 0;
            return s;
        };
        // elapsed = P − time left until expiry (QEMU timed_average_sum); a window that
        // has just rolled has elapsed 0, reported as depth 0 rather than 0/0.
        const std::int64_t elapsed = iv.period - (v.expiry - now);
        auto depth = [&](unsigned t) { return elapsed > 0 ? double(sum[t]) / double(elapsed) : 0.0; };

        timed_totals tt;
        tt.interval_length = iv.seconds;
        tt.rd = summary(0);
        tt.wr = summary(1);
        tt.flush = summary(2);
        tt.avg_rd_queue_depth = depth(0);
        tt.avg_wr_queue_depth = depth(1);
        out.push_back(tt);
    }
    return out;
}

} // namespace bjd::stats::detail
