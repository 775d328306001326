// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// A broadcast "condition variable" for coroutines on one event loop.
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <vector>
#include <utility>

namespace bjd {

/// Waiters sleep until `notify_all`; then each re-checks its own condition. Single loop only.
///
/// The waiting coroutines are kept here and posted to the loop when notified. (A timer that
/// never expires, cancelled to notify, did the same through the reactor: each wait that made
/// it the loop's earliest timer cost a `timerfd_settime` system call, one per request of an
/// NBD client at queue depth 1.) A wait also ends when its cancellation slot fires, as in
/// `timer.async_wait(...) || flag.wait()` of Asio's awaitable operators; destroying the flag
/// ends every wait.
class event_flag {
public:
    explicit event_flag(boost::asio::any_io_executor ex) : ex_(std::move(ex)) {}
    event_flag(const event_flag&) = delete;
    event_flag& operator=(const event_flag&) = delete;
    ~event_flag() { notify_all(); }

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
};

} // namespace bjd
