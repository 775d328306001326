// SPDX-License-Identifier: MIT
// NBD listener: binds unix or TCP sockets and accepts clients on the main loop.
#include "nbd_server.hpp"

#include "nbd_connection.hpp"

#include "bjd/log.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace bjd::exports::detail {

using generic_proto = asio::generic::stream_protocol;
using acceptor_type = asio::basic_socket_acceptor<generic_proto>;

constexpr std::size_t send_buffer_bytes = 4u << 20;

struct nbd_server::state {
    manager* mgr;
    std::shared_ptr<connection_tracker> tracker;
    std::vector<acceptor_type> acceptors;
    std::vector<std::weak_ptr<connection>> conns;
    std::uint32_t max_connections = 0;
    bool stopped = false;

    std::size_t live_connections()
    {
        std::erase_if(conns, [](auto& w) { return w.expired(); });
        return conns.size();
    }
};

nbd_server::nbd_server(manager& m, std::shared_ptr<connection_tracker> tracker)
    : state_(std::make_shared<state>())
{
    state_->mgr = &m;
    state_->tracker = std::move(tracker);
}

nbd_server::~nbd_server()
{
    stop();
}

namespace {

std::string errno_text(int e)
{
    return strerror_text(errno_error(e));
}

std::string endpoint_text(const sockaddr* sa)
{
    char host[INET6_ADDRSTRLEN] = {};
    if (sa->sa_family == AF_INET) {
        auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        return std::string(host) + ":" + std::to_string(ntohs(in->sin_port));
    }
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(in6->sin6_port));
}

} // namespace

qapi::result<void> nbd_server::listen(const nbd_server_options& opts)
{
    auto& loop = state_->mgr->loop();
    state_->max_connections = opts.max_connections;
    boost::system::error_code ec;
    if (opts.addr.type == listen_address::kind::unix_socket) {
        const std::string& path = opts.addr.path;
        sockaddr_un sun{};
        sun.sun_family = AF_UNIX;
        if (path.size() >= sizeof sun.sun_path)
            return qapi::generic("UNIX socket path '" + path + "' is too long");
        std::memcpy(sun.sun_path, path.data(), path.size());
        // Like QEMU, replace a stale socket left by an earlier run (never a regular file).
        struct stat st{};
        if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode))
            ::unlink(path.c_str());
        acceptor_type acc(loop);
        generic_proto::endpoint ep(&sun, sizeof sun);
        acc.open(generic_proto(AF_UNIX, 0), ec);
        if (!ec)
            acc.bind(ep, ec);
        if (ec)
            return qapi::generic("Failed to bind socket to " + path + ": " + errno_text(ec.value()));
        acc.listen(asio::socket_base::max_listen_connections, ec);
        if (ec)
            return qapi::generic("Failed to listen on socket: " + errno_text(ec.value()));
        state_->acceptors.push_back(std::move(acc));
        unix_path_ = path;
        address_ = "unix:" + path;
    } else {
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE;
        addrinfo* res = nullptr;
        const char* host = opts.addr.host.empty() ? nullptr : opts.addr.host.c_str();
        int rc = ::getaddrinfo(host, opts.addr.port.c_str(), &hints, &res);
        if (rc != 0)
            return qapi::generic("address resolution failed for " + opts.addr.host + ":" + opts.addr.port +
                                 ": " + ::gai_strerror(rc));
        std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);
        int last = 0;
        for (addrinfo* ai = res; ai && state_->acceptors.empty(); ai = ai->ai_next) {
            acceptor_type acc(loop);
            acc.open(generic_proto(ai->ai_family, ai->ai_protocol), ec);
            if (ec) { last = ec.value(); continue; }
            acc.set_option(asio::socket_base::reuse_address(true), ec);
            acc.bind(generic_proto::endpoint(ai->ai_addr, ai->ai_addrlen), ec);
            if (!ec)
                acc.listen(asio::socket_base::max_listen_connections, ec);
            if (ec) { last = ec.value(); continue; }
            auto local = acc.local_endpoint(ec);
            address_ = endpoint_text(reinterpret_cast<const sockaddr*>(local.data()));
            state_->acceptors.push_back(std::move(acc));
        }
        if (state_->acceptors.empty())
            return qapi::generic("Failed to bind socket: " + errno_text(last ? last : EADDRNOTAVAIL));
    }
    for (std::size_t i = 0; i < state_->acceptors.size(); ++i) {
        asio::co_spawn(loop, accept_loop(state_, i), [](std::exception_ptr e) {
            if (e) {
                try { std::rethrow_exception(e); }
                catch (const std::exception& ex) { log::get("nbd")->error("nbd accept loop failed: {}", ex.what()); }
            }
        });
    }
    log::get("nbd")->info("NBD server listening on {}", address_);
    return {};
}

void nbd_server::stop()
{
    if (state_->stopped)
        return;
    state_->stopped = true;
    boost::system::error_code ec;
    for (auto& a : state_->acceptors)
        a.close(ec);
    state_->tracker->changed.cancel();   // wakes accept loops waiting for a free slot
    if (!unix_path_.empty())
        ::unlink(unix_path_.c_str());
}

asio::awaitable<void> nbd_server::accept_loop(std::shared_ptr<state> st, std::size_t index)
{
    auto tok = asio::as_tuple(asio::use_awaitable);
    while (!st->stopped) {
        // Like QEMU (nbd_update_server_watch), a server at max-connections stops accepting:
        // further clients wait in the listen backlog until a connection ends.
        while (!st->stopped && st->max_connections && st->live_connections() >= st->max_connections)
            co_await st->tracker->changed.async_wait(tok);
        if (st->stopped)
            break;
        auto [ec, sock] = co_await st->acceptors[index].async_accept(tok);
        if (st->stopped)
            break;
        if (ec) {
            if (ec == asio::error::operation_aborted)
                break;
            // EMFILE and friends: back off briefly rather than spin.
            log::get("nbd")->warn("nbd accept failed: {}", ec.message());
            asio::steady_timer t(st->acceptors[index].get_executor(), std::chrono::milliseconds(100));
            co_await t.async_wait(tok);
            continue;
        }
        {
            // Room for a whole maximum-size read reply in the kernel: fewer writer wake-ups
            // for 1 MiB reads (the kernel caps this at net.core.wmem_max).
            boost::system::error_code ig;
            sock.set_option(asio::socket_base::send_buffer_size(int(send_buffer_bytes)), ig);
        }
        if (sock.local_endpoint().protocol().family() != AF_UNIX) {
            boost::system::error_code ig;
            sock.set_option(asio::ip::tcp::no_delay(true), ig);
        }
        auto c = std::make_shared<connection>(*st->mgr, std::move(sock), st->tracker);
        st->conns.push_back(c);
        connection::start(std::move(c));
    }
}

} // namespace bjd::exports::detail
