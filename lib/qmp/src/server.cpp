// SPDX-License-Identifier: MIT
/// \file
/// The QMP server: listeners, the session registry and event broadcast.
#include "bjd/qmp/server.hpp"

#include "socket_session.hpp"

#include "bjd/log.hpp"
#include "bjd/qmp/context.hpp"
#include "bjd/qmp/dispatch.hpp"
#include "bjd/qmp/version.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/array.hpp>

#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <list>
#include <map>
#include <system_error>
#include <utility>
#include <vector>

namespace bjd::qmp {

namespace asio = boost::asio;
namespace json = boost::json;
using generic_proto = asio::generic::stream_protocol;
using generic_acceptor = net::acceptor;

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

    std::list<net::listener> listeners;   // stable addresses: accept loops hold acceptor pointers
    bool held = false;                                        ///< hold_clients()
    std::vector<std::pair<generic_acceptor*, bool>> waiting;  ///< acceptors listened on while held
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
            auto [ec, sock] = co_await acc->async_accept(bjd::nothrow_awaitable);
            if (self->stopping || ec == asio::error::operation_aborted) {
                co_return;
            }
            if (ec) {
                // EMFILE and friends: back off instead of spinning.
                log::get("qmp")->warn("QMP accept failed: {}", ec.message());
                asio::steady_timer t(self->loop, std::chrono::milliseconds(100));
                co_await t.async_wait(bjd::nothrow_awaitable);
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
        asio::co_spawn(loop, accept_loop(shared_from_this(), acc, tcp), log::on_failure("qmp", "QMP accept loop"));
    }
};

server::server(asio::io_context& loop, std::span<const qapi::command_def> table, server_options opts)
    : impl_(std::make_shared<impl>(loop, table, opts))
{
}

server::~server()
{
    impl_->stopping = true;
    for (auto& l : impl_->listeners) {
        l.close();
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
    net::listener& l = impl_->listeners.emplace_back(net::open_listener(impl_->loop, addr));
    for (auto& acc : l.acceptors) {
        if (impl_->held)
            impl_->waiting.emplace_back(&acc, l.tcp);
        else
            impl_->spawn_accept(&acc, l.tcp);
    }
    if (l.tcp && !l.loopback_only) {
        log::get("qmp")->warn("QMP listening on non-loopback address {}: anyone who can reach it controls the daemon",
                              l.description);
    }
    log::get("qmp")->info("QMP listening on {}", l.description);
    return l.port;
}

void server::hold_clients() noexcept
{
    impl_->held = true;
}

void server::release_clients()
{
    impl_->held = false;
    for (auto [acc, tcp] : std::exchange(impl_->waiting, {}))
        impl_->spawn_accept(acc, tcp);
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
    for (auto& l : self->listeners) {
        l.close();
    }
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
