// SPDX-License-Identifier: MIT
#include "bjd/io/poll_loop.hpp"

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
        const std::int64_t window = window_ns_.load(relaxed);
        const clock::time_point until = idle + std::chrono::nanoseconds(window);
        // When the event was found: the last check before the poll that caught it, so that
        // the gap leaves out the handlers' own time. A sleep's gap includes its first handler
        // (run_one() cannot wait without running it).
        clock::time_point found = idle;
        bool caught = false;
        while (window > 0 && (found = clock::now()) < until) {
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
