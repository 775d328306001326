// SPDX-License-Identifier: MIT
// The stats thread: sleeps until the next window expiry among registered nodes and rolls.
#include "bjd/stats/service.hpp"
#include "bjd/stats/block_acct.hpp"

#include "bjd/log.hpp"

#include <algorithm>
#include <chrono>
#include <limits>

namespace bjd::stats {

service::service(const clock& c) : clock_(c) {}

service::~service() { stop(); }

void service::stop()
{
    if (thread_.joinable()) {
        thread_.request_stop();
        cv_.notify_all();
        thread_.join();
    }
}

void service::add(block_acct& a)
{
    std::lock_guard lk(mu_);
    if (std::none_of(accts_.begin(), accts_.end(), [&a](const entry& e) { return e.acct == &a; }))
        accts_.push_back(entry{&a, 0});   // due now: the thread computes the real expiry
    changed_ = true;
    if (!thread_.joinable()) {
        thread_ = std::jthread([this](std::stop_token st) { run(st); });
        log::get("stats")->debug("stats thread started");
    }
    cv_.notify_all();
}

void service::remove(block_acct& a)
{
    // The thread holds mu_ while it rolls, so once we hold it the object is not in use.
    std::lock_guard lk(mu_);
    accts_.erase(std::remove_if(accts_.begin(), accts_.end(), [&a](const entry& e) { return e.acct == &a; }),
                 accts_.end());
}

void service::wake()
{
    std::lock_guard lk(mu_);
    changed_ = true;
    cv_.notify_all();
}

std::uint64_t service::passes() const
{
    std::lock_guard lk(mu_);
    return passes_;
}

std::size_t service::size() const
{
    std::lock_guard lk(mu_);
    return accts_.size();
}

bool service::running() const
{
    std::lock_guard lk(mu_);
    return thread_.joinable();
}

void service::run(std::stop_token st)
{
    std::unique_lock lk(mu_);
    constexpr std::int64_t never = std::numeric_limits<std::int64_t>::max();
    while (!st.stop_requested()) {
        const std::int64_t now = clock_.now_ns();
        const bool all = changed_;   // intervals changed somewhere: re-evaluate everyone
        changed_ = false;
        std::int64_t due = never;
        for (entry& e : accts_) {
            if (all || e.due <= now) {
                e.acct->roll(now);
                e.due = e.acct->next_due_ns(now).value_or(never);
            }
            due = std::min(due, e.due);
        }
        ++passes_;
        std::int64_t sleep_ns = due == never ? max_sleep_ns : std::clamp<std::int64_t>(due - now, 0, max_sleep_ns);
        // Windows expire at `expiry <= now`; waking a hair late is harmless, early is not
        // useful, so round up to the next microsecond.
        auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(sleep_ns + 1000);
        cv_.wait_until(lk, st, deadline, [this] { return changed_; });
    }
}

} // namespace bjd::stats
