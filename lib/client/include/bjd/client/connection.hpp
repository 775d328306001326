// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// A QMP client connection (QEMU's docs/interop/qmp-spec.rst): connects to a UNIX socket or
/// TCP host:port, reads the greeting, negotiates capabilities, executes commands with ids
/// (several may be in flight) and hands asynchronous events to a callback.
///
///     client::connection c(loop.get_executor());
///     co_await c.connect(client::address::parse("/run/blockjobd/qmp.sock"));
///     co_await c.negotiate();
///     json::object reply = co_await c.execute("query-block-jobs");   // {"return": [...]}
///
/// Everything runs on the executor's thread.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace bjd::client {

/// Connection failures and protocol violations (not QMP errors: those are replies).
class client_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Where the server listens. Accepted spellings: `unix:PATH`, `tcp:HOST:PORT`, `HOST:PORT`
/// (when PORT is numeric and the text holds no '/'), anything else is a UNIX socket path.
struct address {
    bool tcp = false;
    std::string path;   ///< UNIX socket
    std::string host;   ///< TCP ("[::1]" brackets removed)
    std::string port;

    static address parse(std::string_view text);
    std::string to_string() const;
};

class connection {
public:
    explicit connection(boost::asio::any_io_executor ex);
    ~connection();
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    /// Connects, starts the reader and returns the greeting's "QMP" member. Throws client_error.
    boost::asio::awaitable<boost::json::object> connect(const address& addr);

    /// Sends qmp_capabilities (enabling nothing) and throws client_error if it fails.
    boost::asio::awaitable<void> negotiate();

    /// Executes `command` and returns the whole reply: {"return": ...} or {"error": ...}
    /// (its "id" removed). Throws client_error if the connection ends first.
    boost::asio::awaitable<boost::json::object> execute(std::string_view command,
                                                        boost::json::object arguments = {});

    /// Sends a request object as given (raw JSON from a user); adds an "id" when it has
    /// none. Returns the reply as `execute` does (the caller's own "id" is kept).
    boost::asio::awaitable<boost::json::object> send(boost::json::object request);

    /// Called for every event ({"event", "data", "timestamp"}) as it arrives.
    void on_event(std::function<void(const boost::json::object&)> f);

    /// Called once when the server closes the connection (or it fails).
    void on_closed(std::function<void(const std::string& why)> f);

    bool is_open() const noexcept;
    void close();

    struct impl;

private:
    std::shared_ptr<impl> impl_;
};

/// "GenericError: Job 'x' not found" from an {"error": {...}} reply; empty if none.
std::string error_text(const boost::json::object& reply);

} // namespace bjd::client
