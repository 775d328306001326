// SPDX-License-Identifier: MIT
/// \file
/// The QMP server: listeners, the session registry and event broadcast.
#include "bjd/qmp/server.hpp"

#include "socket_session.hpp"

#include "bjd/log.hpp"
#include "bjd/qmp/context.hpp"
#include "bjd/qmp/dispatch.hpp"
#include "bjd/qmp/version.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/array.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <map>
#include <system_error>
#include <vector>

namespace bjd::qmp {

namespace asio = boost::asio;
namespace json = boost::json;
using generic_proto = asio::generic::stream_protocol;
using generic_acceptor = asio::basic_socket_acceptor<generic_proto>;

struct server::impl : std::enable_shared_from_this<server::impl> {
    impl(asio::io_context& l, std::span<const qapi::command_def> t, server_options o)
        : loop(l), dispatch(t), opts(o)
    {
    }

    asio::io_context& loop;
    dispatcher dispatch;
    server_options opts;
    context* ctx = nullptr;
    bool stopping = false;

    std::vector<std::unique_ptr<generic_acceptor>> acceptors;
    std::vector<std::string> unix_paths;
    std::map<std::uint64_t, std::shared_ptr<socket_session>> sessions;

    json_write_options write_opts() const { return {opts.pretty, json_order::qdict}; }

    std::string greeting() const
    {
        json::array caps;
        if (opts.oob) {
            caps.emplace_back("oob");
        }
        json::object qmp{{"version", version_object()}, {"capabilities", std::move(caps)}};
        return to_wire_message(json::object{{"QMP", std::move(qmp)}}, write_opts());
    }

    void on_accept(generic_proto::socket sock)
    {
        if (!ctx) {
            log::get("qmp")->error("QMP client refused: server has no context attached");
            return;
        }
        socket_session::hooks h;
        h.dispatch = &dispatch;
        h.ctx = ctx;
        h.write_opts = write_opts();
        std::weak_ptr<impl> weak = shared_from_this();
        h.on_closed = [weak](std::uint64_t id) {
            if (auto self = weak.lock()) {
                self->sessions.erase(id);
                log::get("qmp")->debug("QMP session {} closed", id);
            }
        };
        auto s = std::make_shared<socket_session>(std::move(sock), std::move(h), opts.oob);
        sessions.emplace(s->id(), s);
        log::get("qmp")->debug("QMP session {} connected", s->id());
        s->start(greeting());
    }

    static asio::awaitable<void> accept_loop(std::shared_ptr<impl> self, generic_acceptor* acc, bool tcp)
    {
        for (;;) {
            auto [ec, sock] = co_await acc->async_accept(asio::as_tuple(asio::use_awaitable));
            if (self->stopping || ec == asio::error::operation_aborted) {
                co_return;
            }
            if (ec) {
                // EMFILE and friends: back off instead of spinning.
                log::get("qmp")->warn("QMP accept failed: {}", ec.message());
                asio::steady_timer t(self->loop, std::chrono::milliseconds(100));
                co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
                continue;
            }
            if (tcp) {
                boost::system::error_code ignored;
                sock.set_option(asio::ip::tcp::no_delay(true), ignored);
            }
            self->on_accept(std::move(sock));
        }
    }

    void spawn_accept(generic_acceptor* acc, bool tcp)
    {
        asio::co_spawn(loop, accept_loop(shared_from_this(), acc, tcp), [](std::exception_ptr e) {
            if (e) {
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& ex) {
                    log::get("qmp")->error("QMP accept loop failed: {}", ex.what());
                }
            }
        });
    }
};

listen_address listen_address::unix_socket(std::string path, std::optional<unsigned> mode)
{
    listen_address a;
    a.type = kind::unix_socket;
    a.path = std::move(path);
    a.mode = mode;
    return a;
}

listen_address listen_address::tcp(std::string host, std::uint16_t port)
{
    listen_address a;
    a.type = kind::tcp;
    a.host = std::move(host);
    a.port = port;
    return a;
}

server::server(asio::io_context& loop, std::span<const qapi::command_def> table, server_options opts)
    : impl_(std::make_shared<impl>(loop, table, opts))
{
}

server::~server()
{
    impl_->stopping = true;
    for (auto& a : impl_->acceptors) {
        boost::system::error_code ec;
        a->close(ec);
    }
    for (const std::string& p : impl_->unix_paths) {
        ::unlink(p.c_str());
    }
    for (auto& [id, s] : impl_->sessions) {
        s->close();
    }
}

void server::attach(context& ctx) noexcept
{
    impl_->ctx = &ctx;
}

std::uint16_t server::listen(const listen_address& addr)
{
    auto fail = [&](const boost::system::error_code& ec, const std::string& what) {
        throw std::system_error(ec.value(), std::system_category(), what);
    };
    boost::system::error_code ec;
    if (addr.type == listen_address::kind::unix_socket) {
        // Replace a stale socket file (never another kind of file).
        struct stat st {};
        if (::lstat(addr.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
            ::unlink(addr.path.c_str());
        }
        asio::local::stream_protocol::endpoint lep(addr.path);
        generic_proto::endpoint ep(lep);
        auto acc = std::make_unique<generic_acceptor>(impl_->loop);
        acc->open(ep.protocol(), ec);
        if (!ec) {
            acc->bind(ep, ec);
        }
        if (ec) {
            fail(ec, "cannot bind QMP socket " + addr.path);
        }
        if (addr.mode && ::chmod(addr.path.c_str(), static_cast<mode_t>(*addr.mode)) != 0) {
            fail(boost::system::error_code(errno, boost::system::system_category()), "cannot chmod " + addr.path);
        }
        acc->listen(asio::socket_base::max_listen_connections, ec);
        if (ec) {
            fail(ec, "cannot listen on " + addr.path);
        }
        impl_->unix_paths.push_back(addr.path);
        impl_->acceptors.push_back(std::move(acc));
        impl_->spawn_accept(impl_->acceptors.back().get(), false);
        log::get("qmp")->info("QMP listening on {}", addr.path);
        return 0;
    }

    auto ip = asio::ip::make_address(addr.host, ec);
    if (ec) {
        fail(ec, "bad QMP address " + addr.host);
    }
    asio::ip::tcp::endpoint tep(ip, addr.port);
    generic_proto::endpoint ep(tep);
    auto acc = std::make_unique<generic_acceptor>(impl_->loop);
    acc->open(ep.protocol(), ec);
    if (!ec) {
        acc->set_option(asio::socket_base::reuse_address(true), ec);
    }
    if (!ec) {
        acc->bind(ep, ec);
    }
    if (!ec) {
        acc->listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        fail(ec, "cannot listen on " + addr.host + ":" + std::to_string(addr.port));
    }
    generic_proto::endpoint bound = acc->local_endpoint(ec);
    std::uint16_t port = addr.port;
    if (!ec) {
        const auto* sa = reinterpret_cast<const sockaddr*>(bound.data());
        port = sa->sa_family == AF_INET6 ? ntohs(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port)
                                         : ntohs(reinterpret_cast<const sockaddr_in*>(sa)->sin_port);
    }
    if (!ip.is_loopback()) {
        log::get("qmp")->warn("QMP listening on non-loopback address {}: anyone who can reach it controls the daemon",
                              addr.host);
    }
    impl_->acceptors.push_back(std::move(acc));
    impl_->spawn_accept(impl_->acceptors.back().get(), true);
    log::get("qmp")->info("QMP listening on {}:{}", addr.host, port);
    return port;
}

void server::emit(std::string_view event, json::object data)
{
    using namespace std::chrono;
    auto now = duration_cast<microseconds>(system_clock::now().time_since_epoch()).count();
    json::object msg;
    msg["timestamp"] = json::object{{"seconds", now / 1000000}, {"microseconds", now % 1000000}};
    msg["event"] = event;
    if (!data.empty()) {
        msg["data"] = std::move(data);
    }
    std::string wire;
    for (auto& [id, s] : impl_->sessions) {
        if (!s->state().command_mode) {
            continue;   // dropped, not queued, while negotiating
        }
        if (wire.empty()) {
            wire = to_wire_message(msg, impl_->write_opts());
        }
        s->send(wire);
    }
}

asio::awaitable<void> server::shutdown()
{
    auto self = impl_;
    self->stopping = true;
    for (auto& a : self->acceptors) {
        boost::system::error_code ec;
        a->close(ec);
    }
    for (const std::string& p : self->unix_paths) {
        ::unlink(p.c_str());
    }
    self->unix_paths.clear();
    std::vector<std::shared_ptr<socket_session>> all;
    for (auto& [id, s] : self->sessions) {
        all.push_back(s);
    }
    for (auto& s : all) {
        s->stop_reading();
    }
    for (auto& s : all) {
        co_await s->flush(std::chrono::milliseconds(1000));
        s->close();
    }
    self->sessions.clear();
}

std::size_t server::session_count() const noexcept
{
    return impl_->sessions.size();
}

} // namespace bjd::qmp
