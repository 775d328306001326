// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Per-node block accounting: QEMU's BlockAcctStats, kept off the data path's locks.
///
/// Every request a block node serves is accounted here: `start()` when it is issued,
/// `done()`/`failed()` when it completes, `invalid()` when the node rejects it before
/// submission. The rules are QEMU 7.2's (block/accounting.c and util/timed-average.c, as observed):
///
/// * bytes and operations count successful requests only;
/// * `failed_*` counts completed-with-error requests; their latency goes into total times,
///   timed statistics and idle time only when `account_failed` is on;
/// * `invalid_*` counts rejected requests; they update the idle time only when
///   `account_invalid` is on, and never touch latencies;
/// * latency histograms count **every** completed request, failed ones included, whatever
///   `account_failed` says;
/// * `idle_time_ns` is absent until the first accounted completion.
///
/// Threading. The data-path calls (`start`, `done`, `failed`, `finish`, `invalid`,
/// `merged`, `note_write_end`) may be made concurrently from any number of threads; they
/// never block and never take a lock. Each calling thread writes its own cache-line
/// aligned shard of relaxed atomic counters (threads beyond `max_shards` share shards, which
/// stays correct because every update is an atomic read-modify-write). Control calls
/// (`set_*`, `snapshot`, `roll`, `next_due_ns`) take an internal mutex that the data path
/// never touches; they may be called from any thread. Reads aggregate the shards on demand,
/// so a snapshot taken while requests complete may be a few requests out of step between
/// two counters (never torn within one counter).
///
/// Timed statistics (QEMU's util/timed-average.c): each configured interval keeps two windows of period
/// P = 4/3 × interval, offset by P/2; latencies go into both, queries read the one that
/// expires first. Windows are rolled by the stats thread (`service`) at their expiry times,
/// and by every `snapshot()`, so values decay to zero on time whether or not anyone asks.
#include "bjd/stats/clock.hpp"

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

namespace bjd::stats {

class service;

/// Request types, QEMU's BlockAcctType order. Write-zeroes requests are writes; discards are
/// unmaps.
enum class op : unsigned { read, write, flush, unmap };
inline constexpr std::size_t op_count = 4;
/// Request types with timed statistics and histograms (read, write, flush).
inline constexpr std::size_t latency_op_count = 3;

/// Cumulative counters of one request type.
struct op_totals {
    std::uint64_t bytes = 0;          ///< bytes of successful requests
    std::uint64_t operations = 0;     ///< successful requests
    std::uint64_t failed = 0;         ///< requests completed with an error
    std::uint64_t invalid = 0;        ///< requests rejected before submission
    std::uint64_t merged = 0;         ///< requests merged into others
    std::uint64_t total_time_ns = 0;  ///< latency sum (successful, + failed if account_failed)
};

/// Latency summary of one request type in one timed window.
struct latency_summary {
    std::uint64_t min_ns = 0;   ///< 0 when the window is empty
    std::uint64_t max_ns = 0;
    std::uint64_t avg_ns = 0;   ///< sum / count (integer division), 0 when empty
};

/// One BlockDeviceTimedStats entry.
struct timed_totals {
    std::uint32_t interval_length = 0;   ///< seconds, as configured
    latency_summary rd, wr, flush;
    double avg_rd_queue_depth = 0;       ///< window latency sum / window elapsed time
    double avg_wr_queue_depth = 0;
};

/// One BlockLatencyHistogramInfo: bins.size() == boundaries.size() + 1.
struct histogram_totals {
    std::vector<std::uint64_t> boundaries;   ///< ns, strictly increasing, all > 0
    std::vector<std::uint64_t> bins;         ///< bin i counts [b(i-1), b(i)); first [0,b0), last [b_last,∞)
    std::uint64_t sum_ns = 0;                ///< latency sum of the requests in the bins
    std::int64_t start_time_ns = 0;          ///< realtime_ns() when the histogram was (re)set
};

/// Everything `snapshot()` reports, aggregated over all threads.
struct snapshot {
    std::array<op_totals, op_count> ops{};
    const op_totals& operator[](op o) const noexcept { return ops[static_cast<unsigned>(o)]; }

    std::uint64_t wr_highest_offset = 0;
    std::optional<std::int64_t> idle_time_ns;   ///< absent until the first accounted completion
    bool account_invalid = true;
    bool account_failed = true;
    std::vector<timed_totals> timed;            ///< in configuration order
    /// Read, write and flush histograms (index by op), absent unless configured.
    std::array<std::optional<histogram_totals>, latency_op_count> histograms;
    std::int64_t start_time_ns = 0;             ///< realtime_ns() when these counters started
};

/// Global switch for the accounting-cost benchmark only. Initialised from the environment
/// variable BJD_STATS_DISABLE (any non-empty value other than "0" disables). While disabled,
/// `start()` returns an inert cookie and completions/rejections are not counted.
bool accounting_enabled() noexcept;
void set_accounting_enabled(bool on) noexcept;

namespace detail {
inline constexpr std::size_t max_shards = 16;
struct shard;
struct timed_set;
struct histogram_set;
} // namespace detail

class block_acct {
public:
    /// What `start()` hands back and the completion call takes back. Trivially copyable.
    struct cookie {
        std::int64_t start_ns = -1;   ///< < 0: accounting was disabled at start
        std::uint64_t bytes = 0;
        op type = op::read;
    };

    /// `c` must outlive this object. With a non-null `svc`, the object registers with that
    /// stats thread as soon as intervals are configured (and unregisters in the destructor);
    /// with null, windows roll only in `roll()` and `snapshot()` (deterministic tests).
    explicit block_acct(const clock& c = monotonic_clock(), service* svc = default_service());
    ~block_acct();
    block_acct(const block_acct&) = delete;
    block_acct& operator=(const block_acct&) = delete;

    /// The process-wide stats service (created on first use, never destroyed).
    static service* default_service();

    // ---- data path: any thread, lock-free -----------------------------------------------------
    cookie start(op type, std::uint64_t bytes) const noexcept;
    void done(const cookie& c) noexcept { finish(c, true); }
    void failed(const cookie& c) noexcept { finish(c, false); }
    void finish(const cookie& c, bool ok) noexcept;
    void invalid(op type) noexcept;
    void merged(op type, std::uint64_t n) noexcept;
    /// A write-type request reached the node ending at `end` (counted even if it fails).
    void note_write_end(std::uint64_t end) noexcept;

    // ---- control: any thread ------------------------------------------------------------------
    void set_account_invalid(bool on) noexcept { account_invalid_.store(on, std::memory_order_relaxed); }
    void set_account_failed(bool on) noexcept { account_failed_.store(on, std::memory_order_relaxed); }
    bool account_invalid() const noexcept { return account_invalid_.load(std::memory_order_relaxed); }
    bool account_failed() const noexcept { return account_failed_.load(std::memory_order_relaxed); }

    /// Replaces the timed-statistics intervals (seconds, each > 0); all windows start afresh
    /// now. An empty list removes timed statistics. Callers validate the values (QMP error
    /// texts); a zero interval is a programmer error (asserted).
    void set_intervals(std::span<const std::uint32_t> seconds);
    std::vector<std::uint32_t> intervals() const;

    /// Sets the latency histogram of `type` (read, write or flush) and zeroes its bins (a new
    /// histogram: its start time is now).
    /// Returns false, changing nothing, unless `boundaries` is strictly increasing and > 0.
    /// An empty list is valid: a single bin counts everything.
    bool set_histogram(op type, std::span<const std::uint64_t> boundaries);
    /// Removes the histogram of `type`, or all of them.
    void clear_histogram(op type);
    void clear_histograms();

    /// Rolls expired timed windows as of `now_ns` (the stats thread calls this at expiry times).
    void roll(std::int64_t now_ns);
    /// The earliest future window expiry after `now_ns`, or nullopt without intervals.
    std::optional<std::int64_t> next_due_ns(std::int64_t now_ns) const;

    /// Aggregates all shards (rolling windows first).
    snapshot read() const;

    const clock& time_source() const noexcept { return clock_; }
    std::int64_t start_time_ns() const noexcept { return start_time_ns_; }

private:
    detail::shard& local_shard() noexcept;
    void roll_locked(std::int64_t now_ns) const;
    void keep(std::shared_ptr<void> p);

    const clock& clock_;
    service* service_;
    std::int64_t start_time_ns_;
    std::array<std::atomic<detail::shard*>, detail::max_shards> shards_{};
    std::atomic<detail::timed_set*> timed_{nullptr};
    std::array<std::atomic<detail::histogram_set*>, latency_op_count> hist_{};
    std::atomic<bool> account_invalid_{true};
    std::atomic<bool> account_failed_{true};

    mutable std::mutex ctl_mu_;   // control path only; the data path never takes it
    /// Every timed/histogram set ever published: a data-path thread may still hold a pointer to
    /// a replaced one, so they are freed only with this object (bounded by reconfigurations).
    std::vector<std::shared_ptr<void>> sets_;
    bool registered_ = false;
};

} // namespace bjd::stats
