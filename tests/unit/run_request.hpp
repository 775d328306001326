// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Runs one data-path coroutine to completion on a test's loop (unit tests of every module).
#include "bjd/result.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

namespace bjd::test {

/// Spawns `a` on `loop`, runs the loop until it is idle, and returns 0 or the request's errno.
template <class T>
int run_request(boost::asio::io_context& loop, boost::asio::awaitable<result<T>> a)
{
    auto f = boost::asio::co_spawn(loop, std::move(a), boost::asio::use_future);
    loop.restart();
    loop.run();
    auto r = f.get();
    return r ? 0 : r.error().value();
}

} // namespace bjd::test
