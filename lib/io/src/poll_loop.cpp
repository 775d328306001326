// SPDX-License-Identifier: MIT
#include "bjd/io/poll_loop.hpp"

#include "bjd/log.hpp"

#include <algorithm>
#include <chrono>

namespace bjd::io {

std::int64_t next_poll_window(const poll_params& p, std::int64_t window_ns, std::int64_t gap_ns) noexcept
{
    if (p.max_ns <= 0)
        return 0;
    if (gap_ns <= window_ns)
        return window_ns; // the event came while polling: the window is right
    if (gap_ns > p.max_ns)
        return p.shrink > 0 ? window_ns / p.shrink : 0; // polling that long would not have caught it
    if (window_ns >= p.max_ns)
        return p.max_ns;
    std::int64_t grown = window_ns > 0 ? window_ns * (p.grow > 0 ? p.grow : 2) : poll_start_ns;
    return std::min(grown, p.max_ns);
}

bool poll_probe::may_poll(clock::time_point now, std::uint64_t count, bool polling) noexcept
{
    switch (phase_) {
    case phase::watching:
        // Only a loop that polls has something to measure.
        if (polling && now >= next_)
            begin(phase::with, now, count);
        return true;
    case phase::with:
        if (period_over(now, count, 0))
            begin(phase::without, now, count);
        break;
    case phase::without:
        if (period_over(now, count, 1))
            begin(phase::with_again, now, count);
        break;
    case phase::with_again:
        if (period_over(now, count, 2))
            decide(now);
        break;
    case phase::resting:
        if (now >= next_)
            phase_ = phase::watching;   // and measure again as soon as the loop polls
        break;
    }
    return phase_ != phase::without && phase_ != phase::resting;
}

bool poll_probe::period_over(clock::time_point now, std::uint64_t count, int i) noexcept
{
    if (!counting_) {
        // The pace of the mode before lingers a while after a switch (on the virtual machine
        // of docs/polling.md, for 100 ms and more): count only after `settle`.
        if (now - start_ < s_.settle)
            return false;
        counting_ = true;
        start_ = now;
        count0_ = count;
        return false;
    }
    const auto elapsed = now - start_;
    if (elapsed < s_.period)
        return false;
    const std::uint64_t done = count - count0_;
    if (done < s_.min_count) {
        // Too little happened to tell (the load stopped, or has not started): poll, and try
        // again soon.
        phase_ = phase::watching;
        next_ = now + s_.retry;
        return false;
    }
    rate_[i] = double(done) / std::chrono::duration<double>(elapsed).count();
    return true;
}

void poll_probe::begin(phase p, clock::time_point now, std::uint64_t count) noexcept
{
    phase_ = p;
    start_ = now;
    count0_ = count;
    counting_ = false;
}

void poll_probe::decide(clock::time_point now) noexcept
{
    ++probes_;
    next_ = now + s_.every;
    const bool pays = rate_polling() >= s_.gain * rate_sleeping();
    last_ = pays ? verdict::pays : verdict::does_not_pay;
    phase_ = pays ? phase::watching : phase::resting;
}

bool poll_loop::may_poll(poll_probe::clock::time_point now, bool polling)
{
    if (!progress_ || !params_.probe)
        return true;   // nothing to measure by, or told not to: QEMU's rule alone
    const auto before = probe_.last();
    const bool may = probe_.may_poll(now, progress_(), polling);
    resting_.store(probe_.resting(), std::memory_order_relaxed);
    if (probe_.probes() == probes_seen_)
        return may;
    probes_seen_ = probe_.probes();
    const auto v = probe_.last();
    const bool pays = v == poll_probe::verdict::pays;
    // A change is news for an operator; the same verdict again is for debugging.
    log::get("io")->log(v != before ? spdlog::level::info : spdlog::level::debug,
                        "{}: polling {} here: {:.0f} requests/s while polling ({:.0f} before, {:.0f} after) against "
                        "{:.0f} while not{}",
                        name_, pays ? "pays" : "does not pay", probe_.rate_polling(), probe_.rate_polling_before(),
                        probe_.rate_polling_after(), probe_.rate_sleeping(),
                        pays ? "" : "; the loop sleeps at once until it measures again");
    return may;
}

void poll_loop::set_params(const poll_params& p) noexcept
{
    params_ = p;
    window_ns_.store(std::clamp<std::int64_t>(window_ns_.load(std::memory_order_relaxed), 0,
                                              std::max<std::int64_t>(p.max_ns, 0)),
                     std::memory_order_relaxed);
}

void poll_loop::run()
{
    using clock = std::chrono::steady_clock;
    constexpr auto relaxed = std::memory_order_relaxed;
    for (;;) {
        // Everything ready now, the reactor included (poll() asks epoll without waiting).
        if (ctx_.poll() > 0)
            continue;
        if (ctx_.stopped())
            return;
        const clock::time_point idle = clock::now();
        const std::int64_t adapted = window_ns_.load(relaxed);
        const std::int64_t window = may_poll(idle, adapted > 0) ? adapted : 0;
        // While clients wait on several requests the next completion is near, whatever the
        // gaps so far. Only the gap rule's window adapts: this one is not its to learn from.
        const bool queued = params_.queued > 0 && params_.max_ns > 0 && in_flight_ && in_flight_() >= params_.queued;
        const std::int64_t polls = queued ? std::max(window, params_.queued_ns) : window;
        const clock::time_point until = idle + std::chrono::nanoseconds(polls);
        // When the event was found: the last check before the poll that caught it, so that
        // the gap leaves out the handlers' own time. A sleep's gap includes its first handler
        // (run_one() cannot wait without running it).
        clock::time_point found = idle;
        bool caught = false;
        while (polls > 0 && (found = clock::now()) < until) {
            if (ctx_.poll() > 0) {
                caught = true;
                break;
            }
            if (ctx_.stopped())
                return;
        }
        if (!caught) {
            if (ctx_.run_one() == 0)
                return;
            found = clock::now();
        }
        (caught ? polled_ : slept_).fetch_add(1, relaxed);
        const auto gap = std::chrono::duration_cast<std::chrono::nanoseconds>(found - idle).count();
        window_ns_.store(next_poll_window(params_, window, gap), relaxed);
    }
}

} // namespace bjd::io
