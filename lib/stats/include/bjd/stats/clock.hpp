// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Time sources for block statistics.
///
/// Latencies, idle time and the timed-statistics windows are measured on a monotonic clock
/// in nanoseconds. The clock is injectable so that unit tests drive time by hand
/// (`manual_clock`) and the window algorithm is deterministic.
#include <atomic>
#include <cstdint>

namespace bjd::stats {

/// A monotonic nanosecond clock. Implementations must be callable from any thread.
class clock {
public:
    virtual ~clock() = default;
    /// Monotonic time in nanoseconds; never decreases.
    virtual std::int64_t now_ns() const noexcept = 0;
};

/// The process-wide CLOCK_MONOTONIC clock (std::chrono::steady_clock). Lives forever.
const clock& monotonic_clock() noexcept;

/// Wall-clock time (CLOCK_REALTIME) in nanoseconds since the Unix epoch: used only for the
/// counters' start time, which exporters compare to detect resets.
std::int64_t realtime_ns() noexcept;

/// A clock that moves only when told to. Thread-safe; for tests.
class manual_clock final : public clock {
public:
    explicit manual_clock(std::int64_t start_ns = 0) noexcept : now_(start_ns) {}
    std::int64_t now_ns() const noexcept override { return now_.load(std::memory_order_relaxed); }
    void set(std::int64_t t) noexcept { now_.store(t, std::memory_order_relaxed); }
    void advance(std::int64_t d) noexcept { now_.fetch_add(d, std::memory_order_relaxed); }

private:
    std::atomic<std::int64_t> now_;
};

} // namespace bjd::stats
