// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// A broadcast "condition variable" for coroutines on one event loop.
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace bjd {

namespace detail {
class event_flag_service;
}

/// Waiters sleep until `notify_all`; then each re-checks its own condition. Single loop only.
///
/// The waiting coroutines are kept here and posted to the loop when notified. (A timer that
/// never expires, cancelled to notify, did the same through the reactor: each wait that made
/// it the loop's earliest timer cost a `timerfd_settime` system call, one per request of an
/// NBD client at queue depth 1.) A wait also ends when its cancellation slot fires, as in
/// `timer.async_wait(...) || flag.wait()` of Asio's awaitable operators; destroying the flag
/// ends every wait. When the loop shuts down, waits still held are abandoned (their
/// coroutines destroyed, not resumed), as Asio's own I/O objects do.
class event_flag {
public:
    explicit event_flag(boost::asio::any_io_executor ex);
    event_flag(const event_flag&) = delete;
    event_flag& operator=(const event_flag&) = delete;
    ~event_flag();

    boost::asio::awaitable<void> wait()
    {
        return boost::asio::async_initiate<const boost::asio::use_awaitable_t<>&, void()>(
            [this](auto handler) { add(std::move(handler)); }, boost::asio::use_awaitable);
    }

    void notify_all()
    {
        // post() never runs a handler here and now, so no wait can be added meanwhile.
        for (auto& w : waiters_) {
            if (w.slot.is_connected())
                w.slot.clear();
            boost::asio::post(ex_, std::move(w.handler));
        }
        waiters_.clear();
    }

private:
    friend class detail::event_flag_service;

    struct waiter {
        boost::asio::any_completion_handler<void()> handler;
        boost::asio::cancellation_slot slot;
        std::uint64_t id;
    };

    template <typename Handler>
    void add(Handler handler)
    {
        // The type-erased handler forwards its target's cancellation slot to one of its own
        // (taking the original for itself): that one is where cancellation arrives.
        boost::asio::any_completion_handler<void()> h(std::move(handler));
        auto slot = h.get_cancellation_slot();
        const std::uint64_t id = next_id_++;
        if (slot.is_connected()) {
            // The slot may fire after this wait ended, or after the flag is gone: the handler
            // then finds nothing to do.
            if (!self_)
                self_ = std::make_shared<event_flag*>(this);
            slot.assign([alive = std::weak_ptr<event_flag*>(self_), id](boost::asio::cancellation_type) {
                if (auto self = alive.lock())
                    (*self)->cancel(id);
            });
        }
        waiters_.push_back({std::move(h), slot, id});
    }

    void cancel(std::uint64_t id)
    {
        auto it = std::find_if(waiters_.begin(), waiters_.end(), [id](const waiter& w) { return w.id == id; });
        if (it == waiters_.end())
            return;
        auto h = std::move(it->handler);
        waiters_.erase(it);
        boost::asio::post(ex_, std::move(h));
    }

    boost::asio::any_io_executor ex_;
    std::vector<waiter> waiters_;
    std::uint64_t next_id_ = 0;
    /// What a cancellation handler checks before it touches the flag (made for the first
    /// wait that can be cancelled).
    std::shared_ptr<event_flag*> self_;
    detail::event_flag_service& service_;
    event_flag* prev_ = nullptr;   ///< the service's list of the loop's flags
    event_flag* next_ = nullptr;
};

namespace detail {

/// The flags of one execution context, so that its shutdown can abandon the waits they
/// hold. Without it a coroutine waiting on a flag that it owns (through the object holding
/// the flag) would keep itself alive past the loop: a leak at every exit with such a wait.
class event_flag_service final : public boost::asio::execution_context::service {
public:
    using key_type = event_flag_service;
    static inline boost::asio::execution_context::id id;

    explicit event_flag_service(boost::asio::execution_context& ctx) : service(ctx) {}

    void add(event_flag* f)
    {
        std::lock_guard lock(m_);
        f->next_ = head_;
        if (head_)
            head_->prev_ = f;
        head_ = f;
    }

    void remove(event_flag* f)
    {
        std::lock_guard lock(m_);
        (f->prev_ ? f->prev_->next_ : head_) = f->next_;
        if (f->next_)
            f->next_->prev_ = f->prev_;
        f->prev_ = f->next_ = nullptr;
    }

    void shutdown() override
    {
        // Destroying a waiter may destroy flags (they unlink themselves): take one flag's
        // waiters at a time, and destroy them outside the lock.
        for (;;) {
            std::vector<event_flag::waiter> doomed;
            {
                std::lock_guard lock(m_);
                for (event_flag* f = head_; f; f = f->next_) {
                    if (!f->waiters_.empty()) {
                        doomed.swap(f->waiters_);
                        break;
                    }
                }
            }
            if (doomed.empty())
                return;
        }
    }

private:
    std::mutex m_;
    event_flag* head_ = nullptr;
};

} // namespace detail

inline event_flag::event_flag(boost::asio::any_io_executor ex)
    : ex_(std::move(ex)),
      service_(boost::asio::use_service<detail::event_flag_service>(
          boost::asio::query(ex_, boost::asio::execution::context)))
{
    service_.add(this);
}

inline event_flag::~event_flag()
{
    notify_all();
    service_.remove(this);
}

} // namespace bjd
