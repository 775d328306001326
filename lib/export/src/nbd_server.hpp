// SPDX-License-Identifier: MIT
#pragma once
// The listening side of the NBD server: one acceptor per bound address, each with an accept
// loop that hands sockets to connections.
#include "bjd/export/manager.hpp"

#include <boost/asio/generic/stream_protocol.hpp>

#include <memory>
#include <string>
#include <vector>

namespace bjd::exports::detail {

struct connection_tracker;
class connection;

class nbd_server {
public:
    nbd_server(manager& m, std::shared_ptr<connection_tracker> tracker);
    ~nbd_server();

    /// Binds (net::open_listener) and starts accepting. Errors: "Failed to bind socket to
    /// P: …" (unix), "Failed to bind socket: …" / "address resolution failed for H:P: …" (inet).
    qapi::result<void> listen(const nbd_server_options& opts);
    /// Stops accepting (existing connections are left alone) and unlinks a unix socket.
    void stop();
    std::string address() const { return address_; }

private:
    struct state;   // shared with the accept loops, which may outlive this object briefly
    static asio::awaitable<void> accept_loop(std::shared_ptr<state> st, std::size_t index);

    std::shared_ptr<state> state_;
    std::string address_;
};

} // namespace bjd::exports::detail
