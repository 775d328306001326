// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The completion token of coroutines that look at an operation's error themselves.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace bjd {

/// `co_await op(..., nothrow_awaitable)` gives the handler's arguments as a tuple, the error
/// code first, instead of throwing it: `auto [ec, n] = co_await async_read(s, b, nothrow_awaitable);`
inline constexpr auto nothrow_awaitable = boost::asio::as_tuple(boost::asio::use_awaitable);

} // namespace bjd
