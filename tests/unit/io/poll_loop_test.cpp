// SPDX-License-Identifier: MIT
// poll_loop: QEMU's window rule, and a loop that runs like io_context::run while it polls.
#include "bjd/io/poll_loop.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <thread>

using bjd::io::next_poll_window;
using bjd::io::poll_loop;
using bjd::io::poll_params;
using bjd::io::poll_start_ns;
namespace asio = boost::asio;

TEST_CASE("io: the polling window follows QEMU's grow and shrink rule", "[io]")
{
    const poll_params off{0, 0, 0};
    CHECK(next_poll_window(off, 0, 1000) == 0);
    CHECK(next_poll_window(off, 8000, 1000) == 0);

    const poll_params p{50000, 0, 0};
    // A short gap grows the window from nothing to the starting value, then doubles it.
    CHECK(next_poll_window(p, 0, 10000) == poll_start_ns);
    CHECK(next_poll_window(p, poll_start_ns, 10000) == 2 * poll_start_ns);
    // Doubling stops at the maximum.
    CHECK(next_poll_window(p, 32000, 40000) == 50000);
    CHECK(next_poll_window(p, 50000, 49999) == 50000);
    // An event caught within the window keeps it.
    CHECK(next_poll_window(p, 16000, 3000) == 16000);
    // A gap longer than the maximum: back to no polling by default, divided with poll-shrink.
    CHECK(next_poll_window(p, 32000, 60000) == 0);
    CHECK(next_poll_window(poll_params{50000, 0, 4}, 32000, 60000) == 8000);
    // poll-grow sets the factor.
    CHECK(next_poll_window(poll_params{50000, 3, 0}, 8000, 20000) == 24000);
}

TEST_CASE("io: poll_loop runs handlers and returns when the work is done", "[io]")
{
    asio::io_context ctx(1);
    poll_loop loop(ctx);
    loop.set_params({1'000'000, 0, 0});
    int ran = 0;
    asio::steady_timer t(ctx, std::chrono::milliseconds(5));
    t.async_wait([&](auto) {
        ++ran;
        for (int i = 0; i < 10; ++i)
            asio::post(ctx, [&] { ++ran; });
    });
    loop.run();
    CHECK(ran == 11);
    CHECK(ctx.stopped());

    // stop() ends it too, with work still outstanding.
    ctx.restart();
    auto guard = asio::make_work_guard(ctx);
    asio::post(ctx, [&] { ctx.stop(); });
    loop.run();
    CHECK(ctx.stopped());
}

namespace {

/// Posts `n` handlers from another thread and runs the loop until the last. Each is posted
/// `gap` after the previous one ran, so that every one is a wake-up of its own however the
/// threads are scheduled.
void feed(asio::io_context& ctx, poll_loop& loop, int n, std::chrono::microseconds gap)
{
    auto guard = asio::make_work_guard(ctx);
    std::atomic<int> seen{0};
    std::thread producer([&] {
        for (int i = 0; i < n; ++i) {
            while (seen.load() < i)
                std::this_thread::yield();
            auto until = std::chrono::steady_clock::now() + gap;
            while (std::chrono::steady_clock::now() < until) {
            }
            asio::post(ctx, [&] {
                if (++seen == n)
                    guard.reset();
            });
        }
    });
    loop.run();
    producer.join();
    CHECK(seen == n);
}

} // namespace

TEST_CASE("io: poll_loop catches close events by polling, and only when enabled", "[io]")
{
    asio::io_context ctx(1);
    poll_loop loop(ctx);
    feed(ctx, loop, 200, std::chrono::microseconds(200));
    CHECK(loop.stats().polled == 0);
    CHECK(loop.stats().window_ns == 0);

    // A window far above the gaps: once it has grown past them (a sleep for each doubling
    // from 4 us, fewer than 20 even for gaps of 100 ms on a loaded machine), events arrive
    // while the loop polls.
    ctx.restart();
    poll_loop polling(ctx);
    polling.set_params({200'000'000, 0, 0});
    feed(ctx, polling, 200, std::chrono::microseconds(200));
    // At most one wake-up per event. Fewer when the machine is loaded: a handler posted while
    // the loop is still in the turn that ran the previous one runs in that turn, with no wait.
    CHECK(polling.stats().polled + polling.stats().slept <= 200);
    CHECK(polling.stats().polled > 150);
    CHECK(polling.stats().window_ns > 0);
    CHECK(polling.stats().window_ns <= 200'000'000);

    // A lower maximum clamps the window at once.
    polling.set_params({1000, 0, 0});
    CHECK(polling.stats().window_ns <= 1000);
}

TEST_CASE("io: poll_loop polls while requests are queued, whatever the gaps", "[io]")
{
    // `n` events 200 us apart on a loop that counts `in_flight` requests, asked to poll while
    // there are 4 or more, for up to 200 ms (not the daemon's 1 ms: on a loaded machine the
    // thread that posts the events may wait longer than that for a CPU).
    auto run = [](std::uint64_t in_flight, std::int64_t max_ns, int n) {
        asio::io_context ctx(1);
        poll_loop loop(ctx);
        loop.set_in_flight([in_flight] { return in_flight; });
        loop.set_params({max_ns, 0, 0, false, 4, 200'000'000});
        feed(ctx, loop, n, std::chrono::microseconds(200));
        return loop.stats();
    };
    // A ceiling of 1 us: by the gaps alone the loop never catches an event 200 us away.
    const auto queued = run(8, 1000, 200);
    CHECK(queued.polled > 150);
    // The gap rule's window did not learn the queue rule's: it stays within its ceiling.
    CHECK(queued.window_ns <= 1000);
    // Fewer in flight than asked: the gaps alone decide, and they are too long.
    CHECK(run(3, 1000, 200).polled < 10);
    // --poll-max-ns 0 means never poll, queue or not.
    CHECK(run(8, 0, 100).polled == 0);
}

namespace {

using bjd::io::poll_probe;
using namespace std::chrono_literals;

/// Drives `probe` for `how_long` in steps of 100 us, as a loop that completes `with` requests a
/// millisecond while it polls and `without` while it does not would. Returns the steps at
/// which it was told not to poll.
int drive(poll_probe& probe, poll_probe::clock::time_point& now, std::uint64_t& done,
          std::chrono::microseconds how_long, double with, double without, bool polling = true)
{
    int refused = 0;
    double carry = 0;
    for (auto end = now + how_long; now < end; now += 100us) {
        const bool may = probe.may_poll(now, done, polling);
        refused += !may;
        carry += (may && polling ? with : without) / 10;
        done += std::uint64_t(carry);
        carry -= std::uint64_t(carry);
    }
    return refused;
}

} // namespace

TEST_CASE("io: poll_probe keeps polling where it makes the loop faster", "[io]")
{
    // Periods of 100 ms after 100 ms to settle, a probe every 10 s, a gain of 1.1 to keep polling.
    poll_probe probe({.settle = 100ms, .period = 100ms, .every = 10s});
    poll_probe::clock::time_point now{};
    std::uint64_t done = 0;
    // 30 requests a millisecond polling, 20 not: the probe's middle period (200 ms with its
    // settling) does without, and then polling stays.
    const int refused = drive(probe, now, done, 700ms, 30, 20);
    CHECK(refused >= 1999);
    CHECK(refused <= 2001);
    CHECK(probe.last() == poll_probe::verdict::pays);
    CHECK(probe.rate_polling() == Approx(30000).epsilon(0.05));
    CHECK(probe.rate_polling_before() == Approx(30000).epsilon(0.05));
    CHECK(probe.rate_polling_after() == Approx(30000).epsilon(0.05));
    CHECK(probe.rate_sleeping() == Approx(20000).epsilon(0.05));
    CHECK_FALSE(probe.resting());
    // Until the next probe, 10 s after the decision, polling is never refused.
    CHECK(drive(probe, now, done, 9s, 30, 20) == 0);
}

TEST_CASE("io: poll_probe counts each period once the mode before has worn off", "[io]")
{
    poll_probe probe({.settle = 100ms, .period = 100ms, .every = 10s});
    poll_probe::clock::time_point now{};
    std::uint64_t done = 0;
    // Polling slows the loop (14 requests a millisecond against 20), and each mode keeps the
    // pace of the one before for 60 ms after a switch. Without the settling, the lag would
    // drag each period towards the other mode's pace.
    int refused = 0;
    bool was = true;
    auto since = now;
    double carry = 0;
    for (auto end = now + 700ms; now < end; now += 100us) {
        const bool may = probe.may_poll(now, done, true);
        refused += !may;
        if (may != was) {
            was = may;
            since = now;
        }
        const bool lagging = now - since < 60ms;
        carry += ((may != lagging) ? 14 : 20) / 10.0;
        done += std::uint64_t(carry);
        carry -= std::uint64_t(carry);
    }
    CHECK(probe.last() == poll_probe::verdict::does_not_pay);
    CHECK(probe.rate_polling() == Approx(14000).epsilon(0.05));
    CHECK(probe.rate_sleeping() == Approx(20000).epsilon(0.05));
}

TEST_CASE("io: poll_probe stops polling where it makes the loop slower, and measures again", "[io]")
{
    poll_probe probe({.settle = 100ms, .period = 100ms, .every = 10s});
    poll_probe::clock::time_point now{};
    std::uint64_t done = 0;
    // Polling slows the loop down (14 requests a millisecond against 20), as on a virtual
    // machine whose disk is emulated on the CPUs the polling thread keeps busy.
    drive(probe, now, done, 700ms, 14, 20);
    CHECK(probe.last() == poll_probe::verdict::does_not_pay);
    CHECK(probe.resting());
    // It sleeps at once for the next 10 s...
    CHECK(drive(probe, now, done, 9500ms, 14, 20) == 95000);
    // ...and then measures again: a host that changed is found out.
    drive(probe, now, done, 1500ms, 40, 20);
    CHECK(probe.last() == poll_probe::verdict::pays);
    CHECK_FALSE(probe.resting());
}

TEST_CASE("io: poll_probe decides nothing from too little, nor for a loop that does not poll", "[io]")
{
    poll_probe probe;   // the defaults: at least 200 requests in each counted period of 200 ms
    poll_probe::clock::time_point now{};
    std::uint64_t done = 0;
    // Under 200 requests a period: the probe gives up, keeps polling and decides nothing.
    CHECK(drive(probe, now, done, 3s, 0.5, 0.8) == 0);
    CHECK(probe.last() == poll_probe::verdict::unknown);
    CHECK_FALSE(probe.resting());
    // A loop whose window is closed is never told not to poll: there is nothing to measure.
    poll_probe idle;
    CHECK(drive(idle, now, done, 2s, 14, 20, false) == 0);
    CHECK(idle.last() == poll_probe::verdict::unknown);
}
