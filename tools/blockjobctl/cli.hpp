// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The modes of blockjobctl, each a coroutine returning the exit status.
#include "bjd/client/connection.hpp"

#include <boost/asio/awaitable.hpp>

#include <optional>
#include <string>
#include <vector>

namespace bjd::ctl {

/// Exit statuses (blockjobctl(1) EXIT STATUS).
inline constexpr int exit_ok = 0;
inline constexpr int exit_qmp_error = 1;   ///< a QMP error reply; watch: the job failed
inline constexpr int exit_usage = 2;       ///< bad usage or connection failure

struct watch_options {
    std::optional<std::string> job;   ///< all jobs when unset
    double interval = 0.5;            ///< seconds between polls
    bool until_ready = false;         ///< also stop once every watched job is ready
};

/// The interactive shell (libedit on a terminal, plain lines otherwise).
boost::asio::awaitable<int> run_shell(client::connection& conn, std::string address);

/// `watch`: progress bars on a terminal, key=value lines otherwise.
boost::asio::awaitable<int> run_watch(client::connection& conn, watch_options opts);

} // namespace bjd::ctl
