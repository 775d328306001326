// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The stall rule of copy-mode auto (a blockjobd extension, schemas/mirror.json): whether a
/// background mirror's remaining dirty bytes have stopped shrinking. Pure: the mirror feeds
/// it samples with their time, the unit tests feed it made-up ones.
///
/// Rule: a window opens at a level (the remaining bytes when it opened). A sample at or
/// below `level * (1 - min_drop)` is progress: the window reopens at that sample. When a
/// window has stayed open for `window` without progress, the mirror has stalled. Falling by
/// a fraction, not just below the last value, keeps the noise of a busy writer (the remainder
/// wobbling around a steady level, a few chunks up, a few down) from passing for progress,
/// and a measured time, not a count of iterations, makes the rule the same at any copy speed
/// and any request size. Time in which the job could not copy (paused, throttled by an
/// error stop) is left out by calling `suspend()`; the next sample opens a fresh window.
#include <chrono>
#include <cstdint>
#include <optional>

namespace bjd::jobs {

class convergence_watch {
public:
    using clock = std::chrono::steady_clock;

    struct config {
        std::chrono::nanoseconds window = std::chrono::seconds(5);
        double min_drop = 0.10;   ///< fraction the remainder must fall by within a window
    };

    convergence_watch() = default;
    explicit convergence_watch(config c) : cfg_(c) {}

    /// Records `remaining` bytes at `now`; true once the remainder has not fallen by
    /// `min_drop` for a whole window. Reaching 0 from above is progress; staying at 0 is
    /// not: a mirror that keeps touching 0 without getting READY (a write lands while it
    /// flushes the target) has stalled too. The mirror asks only before READY.
    bool sample(clock::time_point now, std::uint64_t remaining)
    {
        if (!open_ || (remaining < level_ && static_cast<double>(remaining) <=
                                                  static_cast<double>(level_) * (1.0 - cfg_.min_drop))) {
            open_ = true;
            level_ = remaining;
            since_ = now;
            return false;
        }
        return now - since_ >= cfg_.window;
    }

    /// Forgets the open window (time that must not count, e.g. a pause).
    void suspend() noexcept { open_ = false; }

    /// The level of the open window and how long it has been open at `now`, for the log and
    /// the event's reason.
    std::uint64_t level() const noexcept { return level_; }
    std::chrono::nanoseconds open_for(clock::time_point now) const noexcept { return open_ ? now - since_ : clock::duration{}; }
    const config& settings() const noexcept { return cfg_; }

private:
    config cfg_{};
    bool open_ = false;
    std::uint64_t level_ = 0;
    clock::time_point since_{};
};

} // namespace bjd::jobs
