// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// A broadcast "condition variable" for coroutines on one event loop.
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>

namespace bjd {

/// Waiters sleep until `notify_all`; then each re-checks its own condition. Single loop only.
class event_flag {
public:
    explicit event_flag(boost::asio::any_io_executor ex) : timer_(ex, std::chrono::steady_clock::time_point::max()) {}

    boost::asio::awaitable<void> wait()
    {
        // The timer never expires; `notify_all` cancels every wait. (Setting the expiry here
        // would cancel the other waiters too, and they would wake each other in turn.)
        co_await timer_.async_wait(nothrow_awaitable);
    }
    void notify_all() { timer_.cancel(); }

private:
    boost::asio::steady_timer timer_;
};

} // namespace bjd
