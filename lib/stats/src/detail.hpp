// SPDX-License-Identifier: MIT
#pragma once
// Private state of block_acct: per-thread shards, timed windows, histograms.
#include "bjd/stats/block_acct.hpp"

#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

namespace bjd::stats::detail {

using counter = std::atomic<std::uint64_t>;

/// Index of the calling thread's shard (threads are numbered on first use, modulo max_shards).
std::size_t this_shard_index() noexcept;

enum field : unsigned { f_bytes, f_ops, f_failed, f_invalid, f_merged, f_time, field_count };

inline void atomic_max(std::atomic<std::uint64_t>& a, std::uint64_t v) noexcept
{
    std::uint64_t cur = a.load(std::memory_order_relaxed);
    while (cur < v && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
    }
}

inline void atomic_max(std::atomic<std::int64_t>& a, std::int64_t v) noexcept
{
    std::int64_t cur = a.load(std::memory_order_relaxed);
    while (cur < v && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
    }
}

inline void atomic_min(std::atomic<std::uint64_t>& a, std::uint64_t v) noexcept
{
    std::uint64_t cur = a.load(std::memory_order_relaxed);
    while (cur > v && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
    }
}

/// One thread's cumulative counters.
struct alignas(64) shard {
    counter v[op_count][field_count]{};
    std::atomic<std::int64_t> last_access_ns{std::numeric_limits<std::int64_t>::min()};
    counter wr_highest{0};
};

/// min/max/sum/count of one op type in one window buffer.
struct window_cell {
    counter min{std::numeric_limits<std::uint64_t>::max()};
    counter max{0};
    counter sum{0};
    counter count{0};

    void add(std::uint64_t lat) noexcept
    {
        atomic_min(min, lat);
        atomic_max(max, lat);
        sum.fetch_add(lat, std::memory_order_relaxed);
        count.fetch_add(1, std::memory_order_relaxed);
    }
    void clear() noexcept
    {
        min.store(std::numeric_limits<std::uint64_t>::max(), std::memory_order_relaxed);
        max.store(0, std::memory_order_relaxed);
        sum.store(0, std::memory_order_relaxed);
        count.store(0, std::memory_order_relaxed);
    }
};

/// One thread's cells for one interval: [window 0/1][buffer gen%2][read/write/flush].
struct alignas(64) timed_shard {
    window_cell cell[2][2][latency_op_count];
};

/// One configured interval. Window w (0: offset P/2, 1: offset P) in generation k collects
/// latencies until it expires at start + offset_w + k·P; the stats thread publishes k in
/// gen[w] after clearing buffer k%2, and writers add to buffer gen[w]%2.
struct timed_interval {
    std::uint32_t seconds = 0;
    std::int64_t period = 0;   // P = interval × 4/3, in ns
    std::int64_t start = 0;
    std::atomic<std::int64_t> gen[2]{};

    std::int64_t offset(int w) const noexcept { return w == 0 ? period / 2 : period; }
    /// The generation of window `w` current at `now` (expired at expiry <= now, as QEMU).
    std::int64_t gen_at(int w, std::int64_t now) const noexcept
    {
        std::int64_t e0 = start + offset(w);
        return now < e0 ? 0 : (now - e0) / period + 1;
    }
    std::int64_t expiry(int w, std::int64_t k) const noexcept { return start + offset(w) + k * period; }
};

struct timed_set {
    std::vector<std::unique_ptr<timed_interval>> intervals;
    std::array<std::atomic<timed_shard*>, max_shards> shards{};   // each: intervals.size() entries

    ~timed_set();
    timed_shard* get(std::size_t idx) noexcept;   // allocates on first use
    void add(std::size_t idx, unsigned type, std::uint64_t lat) noexcept;
};

struct histogram_set {
    std::vector<std::uint64_t> bounds;
    std::int64_t start_time_ns = 0;   // realtime
    // each: bounds.size()+1 bin counters, then the latency sum
    std::array<std::atomic<counter*>, max_shards> bins{};

    ~histogram_set();
    void add(std::size_t idx, std::uint64_t lat) noexcept;
    /// The bins summed over all shards, and the latency sum in `sum_ns`.
    std::vector<std::uint64_t> sum(std::uint64_t& sum_ns) const;
};

} // namespace bjd::stats::detail

namespace bjd::stats::detail {

// timed.cpp: the window algorithm over a timed_set (control path; caller serialises).
void roll_timed(timed_set& ts, std::int64_t now) noexcept;
std::optional<std::int64_t> next_due(const timed_set& ts, std::int64_t now) noexcept;
std::vector<timed_totals> read_timed(const timed_set& ts, std::int64_t now);
std::unique_ptr<timed_set> make_timed_set(std::span<const std::uint32_t> seconds, std::int64_t now);

} // namespace bjd::stats::detail
