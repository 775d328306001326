// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The stats thread: rolls every registered node's timed-statistics windows at their expiry
/// times, whether or not anyone queries, so that a window's data never outlives it.
///
/// One `std::jthread` per service, started when the first `block_acct` registers. It sleeps
/// until the earliest window expiry among registered objects (re-evaluated on `wake()`), then
/// calls `block_acct::roll(now)` on each object whose expiry has come. `block_acct` registers itself when intervals are
/// configured and unregisters in its destructor; `remove()` returns only once the thread no
/// longer uses the object.
#include "bjd/stats/clock.hpp"

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stop_token>
#include <thread>
#include <vector>

namespace bjd::stats {

class block_acct;

class service {
public:
    /// `c` must outlive the service. With a manual clock the thread still sleeps in real time
    /// (at most `max_sleep_ns` at once), so tests drive windows with `block_acct::roll`.
    explicit service(const clock& c = monotonic_clock());
    /// Stops and joins the thread. Every registered object must be gone already.
    ~service();
    service(const service&) = delete;
    service& operator=(const service&) = delete;

    /// Any thread. Idempotent.
    void add(block_acct& a);
    /// Any thread. After it returns the stats thread no longer touches `a`.
    void remove(block_acct& a);
    /// Re-evaluates the next expiry (intervals changed). Any thread.
    void wake();
    /// Stops the thread (also done by the destructor).
    void stop();

    /// How many roll passes the thread has made; for tests and diagnostics.
    std::uint64_t passes() const;
    std::size_t size() const;
    bool running() const;

    static constexpr std::int64_t max_sleep_ns = 1'000'000'000;

private:
    void run(std::stop_token st);

    const clock& clock_;
    mutable std::mutex mu_;
    std::condition_variable_any cv_;
    struct entry {
        block_acct* acct;
        std::int64_t due;   // next window expiry; INT64_MAX without intervals
    };
    std::vector<entry> accts_;
    bool changed_ = false;
    std::uint64_t passes_ = 0;
    std::jthread thread_;   // last: started lazily, joined first
};

} // namespace bjd::stats
