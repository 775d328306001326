// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Adaptive polling for an event loop, as QEMU's iothreads do it (`poll-max-ns`, `poll-grow`,
/// `poll-shrink` of the `iothread` object in QEMU's qapi/qom.json; docs/polling.md).
///
/// Waking a sleeping thread costs a system call, a context switch and, in a virtual machine,
/// an exit to the hypervisor: tens of microseconds, as long as a request to a fast disk. When
/// events arrive close together, `poll_loop::run` checks the loop for ready work for a short
/// while before it sleeps, and the next event finds it awake. The window adapts to the gaps it
/// sees: it grows while events keep arriving within `max_ns`, and shrinks once a gap is
/// longer, so an idle loop sleeps at once and costs nothing.
#include <boost/asio/io_context.hpp>

#include <atomic>
#include <cstdint>
#include <string_view>

namespace bjd::io {

/// The main loop's id, as QEMU names its main-loop object (`/objects/main-loop`): what
/// query-iothreads and query-cpus-fast show, and the `loop` label of its metrics.
inline constexpr std::string_view main_loop_id = "main-loop";

/// The polling parameters, with QEMU's names and meanings.
struct poll_params {
    /// The longest time to poll before sleeping, in ns; 0 turns polling off.
    std::int64_t max_ns = 0;
    /// The factor the window grows by; 0 means QEMU's default, 2.
    std::int64_t grow = 0;
    /// The divisor the window shrinks by; 0 means QEMU's default, back to no polling.
    std::int64_t shrink = 0;
};

/// The window polling starts from when it grows from nothing (QEMU's starting value).
inline constexpr std::int64_t poll_start_ns = 4000;

/// The window after a wait of `gap_ns` (the time from going idle to the next event) with the
/// window `window_ns`: QEMU's rule. A gap within the window keeps it; a gap longer than
/// `max_ns` shrinks it; a shorter gap grows it, up to `max_ns`.
std::int64_t next_poll_window(const poll_params& p, std::int64_t window_ns, std::int64_t gap_ns) noexcept;

/// What a loop's polling has done so far.
struct poll_stats {
    std::uint64_t polled = 0;   ///< waits that ended while polling
    std::uint64_t slept = 0;    ///< waits that slept
    std::int64_t window_ns = 0; ///< the window as it has adapted
};

/// Runs an `io_context` as `run()` does, polling adaptively before each sleep. One thread
/// runs it; `stats()` may be read from any.
class poll_loop {
public:
    explicit poll_loop(boost::asio::io_context& ctx) noexcept : ctx_(ctx) {}

    /// Runs handlers until the context is stopped or runs out of work, like `io_context::run`.
    void run();

    /// Takes effect at the loop's next idle moment; the window is clamped to the new maximum.
    void set_params(const poll_params& p) noexcept;
    const poll_params& params() const noexcept { return params_; }

    /// The counters and the current window, from any thread.
    poll_stats stats() const noexcept
    {
        constexpr auto r = std::memory_order_relaxed;
        return {polled_.load(r), slept_.load(r), window_ns_.load(r)};
    }

private:
    boost::asio::io_context& ctx_;
    poll_params params_;
    // Written by the loop's thread only, read by stats() from any: relaxed atomics suffice.
    std::atomic<std::int64_t> window_ns_{0};
    std::atomic<std::uint64_t> polled_{0};
    std::atomic<std::uint64_t> slept_{0};
};

} // namespace bjd::io
