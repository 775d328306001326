// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The QMP server: listens on UNIX sockets and TCP, greets each client, frames its input,
/// runs its requests strictly in order through a `dispatcher`, and broadcasts events.
///
/// Usage (the daemon):
///
///     qmp::server srv(loop);                       // generated command table by default
///     qmp::context ctx{loop, srv};                 // the server is the event sink
///     srv.attach(ctx);
///     srv.listen(qmp::listen_address::unix_socket("/run/bjd.sock", 0600));
///     ...
///     co_await srv.shutdown();                     // flushes responses (quit) and closes
///
/// Everything runs on `loop`'s thread.
#include "bjd/qapi/command.hpp"
#include "bjd/qapi/event_sink.hpp"
#include "bjd/net/listener.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace bjd::qmp {

class context;

/// Where to listen: a UNIX socket, TCP, or a socket inherited from systemd.
using listen_address = net::listen_address;

struct server_options {
    bool pretty = false;   ///< monitor pretty=on: indented output
    bool oob = true;       ///< offer the "oob" capability in the greeting
};

class server final : public qapi::event_sink {
public:
    explicit server(boost::asio::io_context& loop,
                    std::span<const qapi::command_def> table = qapi::command_table(),
                    server_options opts = {});
    ~server() override;
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    /// The context handed to every command. Must be called before the first client connects.
    void attach(context& ctx) noexcept;

    /// Binds (see net::open_listener) and starts accepting. Throws std::system_error on
    /// failure (startup only). Returns the bound TCP port (useful with port "0"), or 0.
    std::uint16_t listen(const listen_address& addr);

    /// Until release_clients(), sockets that listen() opens are bound and listening (clients
    /// can connect) but not accepted: no greeting, no command runs. The daemon holds clients
    /// while it applies its command line, as QEMU only serves its monitors once every
    /// option is processed.
    void hold_clients() noexcept;
    void release_clients();

    /// Adds timestamp {seconds, microseconds} and sends to every session in command mode;
    /// sessions still negotiating never see it.
    void emit(std::string_view event, boost::json::object data) override;

    /// Stops accepting (removing UNIX socket files), stops reading from clients, waits (up to
    /// about a second) until every queued response and event is written, then closes all
    /// sessions. A command still running has its response discarded.
    boost::asio::awaitable<void> shutdown();

    /// Connected sessions (tests, logs).
    std::size_t session_count() const noexcept;

    struct impl;

private:
    std::shared_ptr<impl> impl_;
};

} // namespace bjd::qmp
