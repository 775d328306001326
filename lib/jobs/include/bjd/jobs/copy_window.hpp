// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// How many bytes a copy keeps in flight when the user left buf-size to the daemon
/// (docs/copy-window.md). It starts where QEMU stays (16 MiB for a mirror) and doubles while
/// doubling makes the copy measurably faster, up to `max`. Pure: the mirror tells it, with the
/// time, each copy request that completes and every change of the bytes in flight; the unit
/// tests feed it made-up ones.
///
/// Rule:
/// - Time is cut into periods. A period counts only while the copy is bound by the window: on
///   average over the period, at least half the window was in flight. One that was not (the
///   `speed` limit, guests, or the dirty data running out held the copy back) is void. The
///   average is over time, from every change the copy reports (`in_flight`): a disk that
///   answers a whole window at once empties it for a moment before the copy refills it, and
///   that moment says nothing about what held the copy back.
/// - The first probe comes after `first_probe` of copying: a probe costs the copy while it
///   tries a size that may be slower, and a copy that is over within a second or two could
///   not win that back.
/// - A probe measures the rate at the current size (A), at twice the size (B), then at the
///   current size again (A'), each after a short settling period while requests of the other
///   size drain. The larger size stays if B beat the mean of A and A' by `gain`. Measuring A
///   on both sides of B cancels the drift of a disk whose pace changes during the copy (many
///   start fast while a cache absorbs the first writes, then slow down): compared with A
///   alone, B would look worse for coming later.
/// - After a larger size stayed, the next probe starts from its B, which comes before the next
///   A' just as A did.
/// - A window that stayed below `max` probes again after `reprobe`: disks change pace (a
///   cache fills, another tenant leaves).
/// - A probe that cannot be judged within `give_up` (its periods keep being void) ends at the
///   size it started from: a larger window stays only when it was measured to be faster.
#include <algorithm>
#include <chrono>
#include <cstdint>

namespace bjd::jobs {

class copy_window {
public:
    using clock = std::chrono::steady_clock;

    struct config {
        std::chrono::nanoseconds period = std::chrono::milliseconds(200);
        std::chrono::nanoseconds settle = std::chrono::milliseconds(100);
        double gain = 0.1;   ///< a larger window stays only when the copy got this much faster
        std::chrono::nanoseconds reprobe = std::chrono::seconds(30);
        std::chrono::nanoseconds give_up = std::chrono::seconds(2);
        std::chrono::nanoseconds first_probe = std::chrono::seconds(1);
    };

    /// The last decision, for the log: the window went from `from` to `to` (equal to `from`
    /// when a probe was rejected, `tried` then naming the size that was tried), on the rates
    /// measured at `from` (the mean of A and A') and while trying (bytes per second).
    struct decision {
        std::uint64_t from = 0;
        std::uint64_t tried = 0;
        std::uint64_t to = 0;
        double rate_before = 0;
        double rate_tried = 0;
        bool measured = true;   ///< false: the probe was given up, its rates are unknown
    };

    /// `start`: the size it begins with; `max`: the largest it may grow to (equal to `start`:
    /// a fixed window, as when the user gave buf-size).
    copy_window(std::uint64_t start, std::uint64_t max) : copy_window(start, max, config{}) {}
    copy_window(std::uint64_t start, std::uint64_t max, config c)
        : cfg_(c), size_(std::max<std::uint64_t>(start, 1)), max_(std::max(max, size_)),
          state_(size_ < max_ ? state::measuring : state::settled)
    {
    }

    std::uint64_t size() const noexcept { return size_; }
    const decision& last_decision() const noexcept { return last_; }

    /// Something other than a copy request completed (a range written as zeroes, say): the
    /// period around it does not measure the window.
    void interrupted() noexcept { open_ = false; }

    /// The copy has `bytes` in flight from `now` on (a request started or ended).
    void in_flight(clock::time_point now, std::uint64_t bytes) noexcept
    {
        occupy_until(now);
        in_flight_ = bytes;
    }

    /// A copy request of `bytes` completed at `now`. The size may change (a probe starts, or
    /// ends); returns true when a probe was judged or given up: last_decision() says how.
    bool completed(clock::time_point now, std::uint64_t bytes)
    {
        if (started_ == clock::time_point{})
            started_ = now;
        if (state_ == state::settled) {
            if (size_ == max_ || now - settled_at_ < cfg_.reprobe)
                return false;
            state_ = state::measuring;
            open_ = false;
        }
        if (state_ != state::measuring && now - probe_start_ >= cfg_.give_up) {
            const std::uint64_t larger = std::min(max_, smaller_ * 2);
            last_ = {.from = smaller_, .tried = larger, .to = smaller_, .measured = false};
            size_ = smaller_;
            open_ = false;
            settle(now);
            return true;
        }
        if (!open_) {
            open_ = true;
            period_start_ = now;
            since_ = now;
            occupied_ = 0;
            bytes_ = 0;
            return false;   // the period starts with this completion: its bytes came before
        }
        bytes_ += bytes;
        const auto el = now - period_start_;
        if (el < (state_ == state::settling ? cfg_.settle : cfg_.period))
            return false;
        occupy_until(now);
        open_ = false;
        const double secs = std::chrono::duration<double>(el).count();
        if (occupied_ / secs * 2 < static_cast<double>(size_))
            return false;   // not bound by the window: this period says nothing
        const double rate = static_cast<double>(bytes_) / secs;
        switch (state_) {
        case state::measuring:   // A
            a_ = rate;
            if (now - started_ >= cfg_.first_probe)
                try_larger();
            return false;
        case state::settling:
            state_ = after_settling_;
            return false;
        case state::probing:   // B
            b_ = rate;
            size_ = smaller_;
            settle_then(state::remeasuring);
            return false;
        case state::remeasuring:   // A'
            break;
        case state::settled:
            return false;
        }
        const double base = (a_ + rate) / 2;
        const std::uint64_t larger = std::min(max_, smaller_ * 2);
        const bool stays = b_ >= base * (1.0 + cfg_.gain);
        last_ = {.from = smaller_, .tried = larger, .to = stays ? larger : smaller_, .rate_before = base,
                 .rate_tried = b_};
        if (!stays) {
            settle(now);
            return true;
        }
        size_ = larger;
        if (size_ < max_) {
            a_ = b_;   // B came before the next A', as A did
            try_larger();
        } else {
            settle(now);
        }
        return true;
    }

private:
    enum class state { measuring, settling, probing, remeasuring, settled };

    void settle_then(state next)
    {
        state_ = state::settling;
        after_settling_ = next;
    }

    void try_larger()
    {
        smaller_ = size_;
        size_ = std::min(max_, size_ * 2);
        probe_start_ = period_start_;
        settle_then(state::probing);
    }

    /// Adds the bytes in flight since the last change, times how long, to the open period.
    void occupy_until(clock::time_point now) noexcept
    {
        if (open_ && now > since_)
            occupied_ += static_cast<double>(in_flight_) * std::chrono::duration<double>(now - since_).count();
        since_ = now;
    }

    void settle(clock::time_point now)
    {
        state_ = state::settled;
        settled_at_ = now;
    }

    config cfg_;
    std::uint64_t size_;
    std::uint64_t max_;
    state state_;
    state after_settling_ = state::measuring;
    std::uint64_t smaller_ = 0;   ///< the size a probe started from
    double a_ = 0;                ///< rate at smaller_ before the probe
    double b_ = 0;                ///< rate at the larger size
    bool open_ = false;
    clock::time_point period_start_{};
    clock::time_point started_{};       ///< the first completion: when the copy began
    clock::time_point probe_start_{};   ///< when the probe in progress began (its A)
    std::uint64_t in_flight_ = 0;       ///< bytes in flight, as last reported
    clock::time_point since_{};         ///< when in_flight_ last changed, or the period opened
    double occupied_ = 0;               ///< in-flight bytes times seconds, in the open period
    std::uint64_t bytes_ = 0;
    clock::time_point settled_at_{};
    decision last_{};
};

} // namespace bjd::jobs
