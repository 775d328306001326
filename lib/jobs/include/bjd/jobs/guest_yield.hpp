// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// How many bytes a copying job may have in flight while guests use the same node: the copy
/// yields to them (docs/copy-yield.md). Pure: the mirror feeds it the latency of each guest
/// request that went through its filter, with the time; stream, commit and backup feed it what
/// their filter's statistics counted since they last looked; the unit tests feed it made-up
/// ones.
///
/// Rule, in the manner of LEDBAT (RFC 6817), with the guests' request latency for the delay:
/// - Time is cut into windows. A window in which guests made no request lets the copy use its
///   whole buffer: nobody is waiting behind it.
/// - The base latency is the lowest window average of the last `base_memory`: what guests see
///   when the copy gets in their way least.
/// - A window with guest requests whose average stays within `slack` above the base lets the
///   budget grow by one step; one above it halves the budget, down to one step. So guests'
///   latency stays within about `slack` of the base, and with it their rate at a given
///   queue depth, while the copy takes what is left.
/// - When guests start with no base known (none in `base_memory`), the budget starts again
///   from one step: the next windows then measure a base that the copy has not inflated.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>

namespace bjd::jobs {

class guest_yield {
public:
    using clock = std::chrono::steady_clock;

    struct config {
        std::chrono::nanoseconds window = std::chrono::milliseconds(50);
        double slack = 0.2;   ///< guest latency allowed above the base, as a fraction of it
        std::chrono::nanoseconds base_memory = std::chrono::seconds(10);
    };

    /// `step`: the smallest budget and its increment (one copy request); `max`: the job's
    /// buffer (buf-size).
    guest_yield(std::uint64_t step, std::uint64_t max) : guest_yield(step, max, config{}) {}
    guest_yield(std::uint64_t step, std::uint64_t max, config c)
        : cfg_(c), step_(std::max<std::uint64_t>(step, 1)), max_(std::max(max, step_)), budget_(max_)
    {
    }

    /// New limits: the copy's request size and buffer changed (copy_window.hpp). A budget at
    /// the old maximum (no guests) follows the new one.
    void resize(std::uint64_t step, std::uint64_t max)
    {
        const bool whole = budget_ == max_;
        step_ = std::max<std::uint64_t>(step, 1);
        max_ = std::max(max, step_);
        budget_ = whole ? max_ : std::clamp(budget_, step_, max_);
    }

    /// A guest request that completed at `now` after `latency`.
    void guest_io(clock::time_point now, std::chrono::nanoseconds latency)
    {
        roll(now);
        sum_ += latency;
        ++count_;
    }

    /// `count` guest requests completed by `now`, their latencies adding up to `total` (read
    /// from a node's statistics rather than timed one by one).
    void guest_ios(clock::time_point now, std::uint64_t count, std::chrono::nanoseconds total)
    {
        roll(now);
        sum_ += total;
        count_ += count;
    }

    /// Bytes the copy may have in flight at `now`.
    std::uint64_t budget(clock::time_point now)
    {
        roll(now);
        return budget_;
    }

    /// The base latency (zero before any guest request), for the log.
    std::chrono::nanoseconds base() const noexcept
    {
        return history_.empty() ? std::chrono::nanoseconds{} : base_;
    }
    /// The average of the last window with guest requests (zero before any), for the log.
    std::chrono::nanoseconds last() const noexcept { return last_; }
    const config& settings() const noexcept { return cfg_; }

private:
    void roll(clock::time_point now)
    {
        if (!started_) {
            started_ = true;
            window_start_ = now;
            return;
        }
        if (now - window_start_ < cfg_.window)
            return;
        close_window(now);
        window_start_ = now;
    }

    void close_window(clock::time_point now)
    {
        if (count_ == 0) {
            budget_ = max_;
            return;
        }
        const auto avg = sum_ / count_;
        last_ = avg;
        sum_ = {};
        count_ = 0;
        while (!history_.empty() && now - history_.front().first > cfg_.base_memory)
            history_.pop_front();
        const bool first = history_.empty();
        // Keep only windows that could still be the minimum.
        while (!history_.empty() && history_.back().second >= avg)
            history_.pop_back();
        history_.emplace_back(now, avg);
        base_ = history_.front().second;
        if (first) {
            budget_ = step_;   // guests are new: measure them with the copy held back
            return;
        }
        if (static_cast<double>(avg.count()) > static_cast<double>(base_.count()) * (1.0 + cfg_.slack))
            budget_ = std::max(step_, budget_ / 2);
        else
            budget_ = std::min(max_, budget_ + step_);
    }

    config cfg_;
    std::uint64_t step_;
    std::uint64_t max_;
    std::uint64_t budget_;
    bool started_ = false;
    clock::time_point window_start_{};
    std::chrono::nanoseconds sum_{};
    std::uint64_t count_ = 0;
    /// Window averages, oldest first, each lower than every later one: front is the minimum.
    std::deque<std::pair<clock::time_point, std::chrono::nanoseconds>> history_;
    std::chrono::nanoseconds base_{};
    std::chrono::nanoseconds last_{};
};

} // namespace bjd::jobs
