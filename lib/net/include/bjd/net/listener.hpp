// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Listening sockets for the daemon's servers (QMP monitors, the NBD server, /metrics).
///
/// One place decides how a socket is made: a UNIX socket replaces a stale socket file (never
/// another kind of file), gets the owner, group and mode asked for, and is never left
/// world-writable; a TCP socket reuses its address and may pick a free port; an inherited
/// socket (systemd socket activation) is checked to be a listening stream socket and is
/// adopted as it is.
///
///     auto l = net::open_listener(loop, net::listen_address::unix_socket("/run/x.sock"));
///     co_await l.acceptors[0].async_accept(...);
///     l.close();   // stops accepting and removes the socket file it created
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace bjd::net {

/// Where to listen.
struct listen_address {
    enum class kind { unix_socket, inet, fd };
    kind type = kind::unix_socket;

    std::string path;                   ///< unix_socket: filesystem path
    std::optional<unsigned> mode;       ///< unix_socket: permission bits set before listen()
    std::string owner;                  ///< unix_socket: user name or uid to chown to ("" keeps)
    std::string group;                  ///< unix_socket: group name or gid to chown to ("" keeps)

    std::string host = "127.0.0.1";     ///< inet: numeric address or host name
    std::string port;                   ///< inet: numeric port or service; "0" picks a free one

    int fd = -1;                        ///< fd: an inherited listening socket (see inherited_fd)

    static listen_address unix_socket(std::string path, std::optional<unsigned> mode = std::nullopt);
    static listen_address inet(std::string host, std::string port);
    static listen_address inherited(int fd);
};

using acceptor = boost::asio::basic_socket_acceptor<boost::asio::generic::stream_protocol>;

/// Open listening sockets: more than one when a host name resolves to several addresses.
struct listener {
    std::vector<acceptor> acceptors;
    std::string description;     ///< "unix:/run/x.sock", "127.0.0.1:10809", "fd:3 (qmp)"
    std::uint16_t port = 0;      ///< inet: the bound port (useful with port "0")
    bool tcp = false;            ///< an AF_INET/AF_INET6 socket (inet, or an inherited one)
    bool loopback_only = true;   ///< inet: every bound address is a loopback address
    std::string owned_path;      ///< a socket file this listener created, removed by close()

    /// Stops accepting and removes the socket file the listener created. Idempotent.
    void close() noexcept;
};

/// Binds and listens. Throws std::system_error whose what() is a sentence for the user
/// ("Failed to bind socket to /x: Permission denied").
listener open_listener(boost::asio::io_context& loop, const listen_address& addr);

/// The fd systemd passed for `spec`: a name from LISTEN_FDNAMES (FileDescriptorName= in the
/// .socket unit) or a number. Numbers are accepted only for fds systemd passed, or for any
/// open fd when the daemon was not socket-activated (`blockjobd --chardev ...,fd=3 3<>...`).
/// Throws std::system_error with a sentence naming what is available.
int inherited_fd(const std::string& spec);

} // namespace bjd::net
