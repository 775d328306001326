// SPDX-License-Identifier: MIT
#include "bjd/block/io_gate.hpp"

#include <boost/asio/this_coro.hpp>

namespace bjd::block {

boost::asio::awaitable<void> io_gate::wait_change()
{
    if (!changed_)
        changed_.emplace(co_await boost::asio::this_coro::executor);
    co_await changed_->wait();
}

boost::asio::awaitable<io_gate::pass> io_gate::enter()
{
    while (closed_ > 0)
        co_await wait_change();
    ++in_flight_;
    co_return pass(this);
}

boost::asio::awaitable<io_gate::section> io_gate::drain()
{
    ++closed_;
    section s(this);
    while (in_flight_ > 0)
        co_await wait_change();
    co_return s;
}

void io_gate::leave()
{
    if (--in_flight_ == 0 && changed_)
        changed_->notify_all();
}

void io_gate::reopen()
{
    if (--closed_ == 0 && changed_)
        changed_->notify_all();
}

} // namespace bjd::block
