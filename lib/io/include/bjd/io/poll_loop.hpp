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
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace bjd::io {

/// The main loop's id, as QEMU names its main-loop object (`/objects/main-loop`): what
/// query-iothreads and query-cpus-fast show, and the `loop` label of its metrics.
inline constexpr std::string_view main_loop_id = "main-loop";

/// The polling parameters: QEMU's, with their names and meanings, then blockjobd's own.
struct poll_params {
    /// The longest time to poll before sleeping, in ns; 0 turns polling off.
    std::int64_t max_ns = 0;
    /// The factor the window grows by; 0 means QEMU's default, 2.
    std::int64_t grow = 0;
    /// The divisor the window shrinks by; 0 means QEMU's default, back to no polling.
    std::int64_t shrink = 0;
    /// blockjobd's own: measure now and then whether polling pays, and sleep at once where it
    /// does not (poll_probe; `--poll-probe`). Off: poll by QEMU's rule alone.
    bool probe = true;
    /// blockjobd's own: while clients wait on at least this many requests that the loop
    /// serves, it polls up to `queued_ns` for its next event whatever the gaps
    /// (`--poll-queued`; docs/polling.md). 0: off. `max_ns` 0 still means never poll.
    std::uint64_t queued = 0;
    /// How long the loop polls under that rule, in ns (the daemon's 1 ms; tests ask for more).
    std::int64_t queued_ns = 1'000'000;
};

/// The window polling starts from when it grows from nothing (QEMU's starting value).
inline constexpr std::int64_t poll_start_ns = 4000;

/// The window after a wait of `gap_ns` (the time from going idle to the next event) with the
/// window `window_ns`: QEMU's rule. A gap within the window keeps it; a gap longer than
/// `max_ns` shrinks it; a shorter gap grows it, up to `max_ns`.
std::int64_t next_poll_window(const poll_params& p, std::int64_t window_ns, std::int64_t gap_ns) noexcept;

/// Whether polling pays where a loop runs. Polling saves wake-ups, but it keeps a CPU busy,
/// and where that CPU is wanted elsewhere (a virtual machine whose disk is emulated on the
/// host CPUs its vCPUs also run on; docs/polling.md has one) a polling loop's own events come
/// slower for it: on such a host queue depth 1 ran at 0.7 of its pace without polling. So a
/// loop that polls measures, now and then, how much work it gets done (a count that only
/// grows, such as the I/O requests its engines completed) in three periods: polling, not
/// polling, polling again. Each period counts only after it has settled: the pace of the
/// mode before lingers. Polling stays if the two periods with it did at least `gain` times
/// as much as the one without; otherwise the loop sleeps at once until `every` has passed,
/// and then measures again. A probe with a period that did too little to tell (the load
/// stopped, or had not started) decides nothing, and the next one comes after `retry`. Not
/// thread-safe: the loop's thread uses it.
///
/// Handlers run or wake-ups are no such count: a request takes more of them with polling than
/// without (about 2 wake-ups against 1 at queue depth 1), so they would favour polling.
class poll_probe {
public:
    using clock = std::chrono::steady_clock;
    struct settings {
        clock::duration settle = std::chrono::milliseconds(100);   ///< at a period's start, not counted
        clock::duration period = std::chrono::milliseconds(200);   ///< counted
        clock::duration every = std::chrono::seconds(20);
        double gain = 1.1;
        std::uint64_t min_count = 200;   ///< of work per period, for the period to count
        clock::duration retry = std::chrono::seconds(1);   ///< after a probe that could not tell
    };
    enum class verdict { unknown, pays, does_not_pay };

    poll_probe() noexcept : poll_probe(settings{}) {}
    explicit poll_probe(settings s) noexcept : s_(s) {}

    /// Called at each idle moment of the loop with its count of work so far; `polling`: its
    /// window is open. Returns whether it may poll now.
    bool may_poll(clock::time_point now, std::uint64_t count, bool polling) noexcept;

    verdict last() const noexcept { return last_; }
    /// Probes decided so far.
    std::uint64_t probes() const noexcept { return probes_; }
    /// Polling was measured not to pay, and the loop sleeps at once until the next probe.
    bool resting() const noexcept { return phase_ == phase::resting; }
    /// Work per second in the last decided probe, with polling (the mean of its two periods)
    /// and without.
    double rate_polling() const noexcept { return (rate_[0] + rate_[2]) / 2; }
    double rate_sleeping() const noexcept { return rate_[1]; }
    /// Work per second in each period with polling: before the one without, and after it.
    double rate_polling_before() const noexcept { return rate_[0]; }
    double rate_polling_after() const noexcept { return rate_[2]; }

private:
    enum class phase { watching, with, without, with_again, resting };
    /// Whether the current period (its settling, then its count) is over at `now`; then its
    /// rate is rate_[i]. A period that did too little ends the probe instead (false).
    bool period_over(clock::time_point now, std::uint64_t count, int i) noexcept;
    void begin(phase p, clock::time_point now, std::uint64_t count) noexcept;
    void decide(clock::time_point now) noexcept;

    settings s_;
    phase phase_ = phase::watching;
    verdict last_ = verdict::unknown;
    clock::time_point next_{};   ///< watching: the next probe; resting: the end of the rest
    clock::time_point start_{};   ///< of the period, then of its count
    std::uint64_t count0_ = 0;
    bool counting_ = false;       ///< past the period's settle
    double rate_[3] = {0, 0, 0};
    std::uint64_t probes_ = 0;
};

/// What a loop's polling has done so far.
struct poll_stats {
    std::uint64_t polled = 0;   ///< waits that ended while polling
    std::uint64_t slept = 0;    ///< waits that slept
    std::int64_t window_ns = 0; ///< the window as it has adapted
    /// Polling was measured not to pay (poll_probe), and the loop sleeps at once for now.
    bool resting = false;
};

/// Runs an `io_context` as `run()` does, polling adaptively before each sleep. One thread
/// runs it; `stats()` may be read from any.
class poll_loop {
public:
    /// `name` names the loop in the log (its `loop` label).
    explicit poll_loop(boost::asio::io_context& ctx, std::string name = std::string(main_loop_id))
        : ctx_(ctx), name_(std::move(name))
    {
    }

    /// Runs handlers until the context is stopped or runs out of work, like `io_context::run`.
    void run();

    /// What the loop's probe (poll_probe) measures its work by: a count that only grows, read
    /// on the loop's thread. Without one the loop polls by QEMU's rule alone. Set before run().
    void set_progress(std::function<std::uint64_t()> progress) { progress_ = std::move(progress); }

    /// The requests clients wait on that this loop serves, read on the loop's thread, for
    /// `poll_params::queued`. Without it that rule never applies. Set before run().
    void set_in_flight(std::function<std::uint64_t()> in_flight) { in_flight_ = std::move(in_flight); }

    /// Takes effect at the loop's next idle moment; the window is clamped to the new maximum.
    void set_params(const poll_params& p) noexcept;
    const poll_params& params() const noexcept { return params_; }

    /// The counters and the current window, from any thread.
    poll_stats stats() const noexcept
    {
        constexpr auto r = std::memory_order_relaxed;
        return {polled_.load(r), slept_.load(r), window_ns_.load(r), resting_.load(r)};
    }

private:
    /// Asks the probe whether to poll, and logs what it decided when that changes.
    bool may_poll(poll_probe::clock::time_point now, bool polling);

    boost::asio::io_context& ctx_;
    std::string name_;
    poll_probe probe_;
    std::function<std::uint64_t()> progress_;
    std::function<std::uint64_t()> in_flight_;
    std::uint64_t probes_seen_ = 0;
    poll_params params_;
    // Written by the loop's thread only, read by stats() from any: relaxed atomics suffice.
    std::atomic<std::int64_t> window_ns_{0};
    std::atomic<std::uint64_t> polled_{0};
    std::atomic<std::uint64_t> slept_{0};
    std::atomic<bool> resting_{false};
};

} // namespace bjd::io
