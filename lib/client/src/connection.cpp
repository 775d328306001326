// SPDX-License-Identifier: MIT
/// \file
/// The QMP client connection: a reader coroutine frames the server's output with Boost.JSON's
/// incremental parser and routes replies to their waiting callers by id.
#include "bjd/client/connection.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/stream_parser.hpp>

#include <chrono>
#include <map>
#include <optional>
#include <vector>

namespace bjd::client {

namespace asio = boost::asio;
namespace json = boost::json;
using generic_socket = asio::generic::stream_protocol::socket;

address address::parse(std::string_view text)
{
    address a;
    if (text.starts_with("unix:")) {
        a.path = std::string(text.substr(5));
        return a;
    }
    std::string_view rest = text;
    bool explicit_tcp = false;
    if (rest.starts_with("tcp:")) {
        rest.remove_prefix(4);
        explicit_tcp = true;
    }
    auto colon = rest.rfind(':');
    if (colon != std::string_view::npos && rest.find('/') == std::string_view::npos) {
        std::string_view port = rest.substr(colon + 1);
        bool numeric = !port.empty() && port.find_first_not_of("0123456789") == std::string_view::npos;
        if (numeric || explicit_tcp) {
            std::string_view host = rest.substr(0, colon);
            if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
                host = host.substr(1, host.size() - 2);
            }
            a.tcp = true;
            a.host = host.empty() ? "localhost" : std::string(host);
            a.port = std::string(port);
            return a;
        }
    }
    a.path = std::string(text);
    return a;
}

std::string address::to_string() const
{
    if (!tcp) {
        return path;
    }
    return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + port;
}

std::string error_text(const json::object& reply)
{
    const json::value* e = reply.if_contains("error");
    if (!e || !e->is_object()) {
        return {};
    }
    const auto& o = e->get_object();
    std::string cls, desc;
    if (auto* c = o.if_contains("class"); c && c->is_string()) {
        cls = c->get_string();
    }
    if (auto* d = o.if_contains("desc"); d && d->is_string()) {
        desc = d->get_string();
    }
    return cls.empty() ? desc : cls + ": " + desc;
}

namespace {
/// One caller waiting for a reply (or the greeting): the timer never expires and is
/// cancelled when the reply arrives or the connection ends.
struct waiter {
    explicit waiter(asio::any_io_executor ex) : wake(ex, std::chrono::steady_clock::time_point::max()) {}
    asio::steady_timer wake;
    std::optional<json::object> reply;
};
} // namespace

struct connection::impl : std::enable_shared_from_this<impl> {
    explicit impl(asio::any_io_executor e) : ex(e), sock(e) {}

    asio::any_io_executor ex;
    generic_socket sock;
    bool open = false;
    std::string closed_why;
    std::string outbuf;
    bool writing = false;
    std::uint64_t next_id = 1;
    std::shared_ptr<waiter> greeting;
    std::map<std::string, std::shared_ptr<waiter>> pending;   // by serialized id
    std::function<void(const json::object&)> event_cb;
    std::function<void(const std::string&)> closed_cb;

    void shut(std::string why)
    {
        if (!open && closed_why.size()) {
            return;
        }
        open = false;
        closed_why = std::move(why);
        boost::system::error_code ec;
        sock.shutdown(generic_socket::shutdown_both, ec);
        sock.close(ec);
        if (greeting) {
            greeting->wake.cancel();
        }
        for (auto& [id, w] : pending) {
            w->wake.cancel();
        }
        if (closed_cb) {
            auto cb = std::move(closed_cb);
            closed_cb = nullptr;
            cb(closed_why);
        }
    }

    void deliver(json::object msg)
    {
        if (greeting && !greeting->reply) {
            greeting->reply = std::move(msg);
            greeting->wake.cancel();
            return;
        }
        if (msg.contains("event")) {
            if (event_cb) {
                event_cb(msg);
            }
            return;
        }
        const json::value* id = msg.if_contains("id");
        if (!id) {
            // A reply without id answers a request that failed before its id was read
            // (unparsable JSON): give it to the oldest waiter.
            if (!pending.empty()) {
                auto it = pending.begin();
                it->second->reply = std::move(msg);
                it->second->wake.cancel();
                pending.erase(it);
            }
            return;
        }
        auto it = pending.find(json::serialize(*id));
        if (it == pending.end()) {
            return;   // nobody waits for it (a caller gave up)
        }
        it->second->reply = std::move(msg);
        it->second->wake.cancel();
        pending.erase(it);
    }

    static asio::awaitable<void> read_loop(std::shared_ptr<impl> self)
    {
        std::vector<char> buf(64 * 1024);
        json::stream_parser parser;
        std::string why = "connection closed by the server";
        while (self->open) {
            auto [ec, n] = co_await self->sock.async_read_some(asio::buffer(buf), bjd::nothrow_awaitable);
            if (ec) {
                if (ec != asio::error::eof && ec != asio::error::operation_aborted) {
                    why = "read failed: " + ec.message();
                }
                break;
            }
            std::size_t pos = 0;
            bool bad = false;
            while (pos < n) {
                boost::system::error_code pec;
                pos += parser.write_some(buf.data() + pos, n - pos, pec);
                if (pec) {
                    why = "the server sent invalid JSON: " + pec.message();
                    bad = true;
                    break;
                }
                if (parser.done()) {
                    json::value v = parser.release();
                    parser.reset();
                    if (!v.is_object()) {
                        why = "the server sent JSON that is not an object";
                        bad = true;
                        break;
                    }
                    self->deliver(std::move(v.get_object()));
                    if (!self->open) {
                        co_return;
                    }
                }
            }
            if (bad) {
                break;
            }
        }
        self->shut(why);
    }

    static asio::awaitable<void> write_loop(std::shared_ptr<impl> self)
    {
        while (!self->outbuf.empty() && self->open) {
            std::string chunk;
            chunk.swap(self->outbuf);
            auto [ec, n] = co_await asio::async_write(self->sock, asio::buffer(chunk), bjd::nothrow_awaitable);
            if (ec) {
                self->shut("write failed: " + ec.message());
            }
        }
        self->writing = false;
    }

    void write(std::string wire)
    {
        outbuf += wire;
        if (!writing) {
            writing = true;
            asio::co_spawn(ex, write_loop(shared_from_this()), asio::detached);
        }
    }

    asio::awaitable<json::object> roundtrip(json::object request)
    {
        if (!open) {
            throw client_error(closed_why.empty() ? "not connected" : closed_why);
        }
        bool own_id = false;
        if (!request.contains("id")) {
            request["id"] = "bjc-" + std::to_string(next_id++);
            own_id = true;
        }
        std::string key = json::serialize(request["id"]);
        auto w = std::make_shared<waiter>(ex);
        pending[key] = w;
        write(json::serialize(request) + "\n");
        auto self = shared_from_this();
        co_await w->wake.async_wait(bjd::nothrow_awaitable);
        if (!w->reply) {
            pending.erase(key);
            throw client_error(closed_why.empty() ? "connection closed" : closed_why);
        }
        if (own_id) {
            w->reply->erase("id");
        }
        co_return std::move(*w->reply);
    }
};

connection::connection(asio::any_io_executor ex) : impl_(std::make_shared<impl>(ex)) {}

connection::~connection()
{
    impl_->event_cb = nullptr;
    impl_->closed_cb = nullptr;
    close();
}

asio::awaitable<json::object> connection::connect(const address& addr)
{
    auto self = impl_;
    boost::system::error_code ec;
    if (addr.tcp) {
        asio::ip::tcp::resolver resolver(self->ex);
        auto [rec, results] = co_await resolver.async_resolve(addr.host, addr.port, bjd::nothrow_awaitable);
        if (rec) {
            throw client_error("cannot resolve " + addr.to_string() + ": " + rec.message());
        }
        ec = asio::error::host_not_found;
        for (const auto& r : results) {
            asio::generic::stream_protocol::endpoint ep(r.endpoint());
            boost::system::error_code ignored;
            self->sock.close(ignored);
            auto [cec] = co_await self->sock.async_connect(ep, bjd::nothrow_awaitable);
            ec = cec;
            if (!ec) {
                self->sock.set_option(asio::ip::tcp::no_delay(true), ignored);
                break;
            }
        }
    } else {
        asio::local::stream_protocol::endpoint lep(addr.path);
        asio::generic::stream_protocol::endpoint ep(lep);
        auto [cec] = co_await self->sock.async_connect(ep, bjd::nothrow_awaitable);
        ec = cec;
    }
    if (ec) {
        throw client_error("cannot connect to " + addr.to_string() + ": " + ec.message());
    }
    self->open = true;
    self->closed_why.clear();
    self->greeting = std::make_shared<waiter>(self->ex);
    auto g = self->greeting;
    asio::co_spawn(self->ex, impl::read_loop(self), asio::detached);
    co_await g->wake.async_wait(bjd::nothrow_awaitable);
    self->greeting.reset();
    if (!g->reply) {
        throw client_error("no QMP greeting from " + addr.to_string() + ": " + self->closed_why);
    }
    const json::value* qmp = g->reply->if_contains("QMP");
    if (!qmp || !qmp->is_object()) {
        close();
        throw client_error(addr.to_string() + " does not speak QMP (greeting: " + json::serialize(*g->reply) + ")");
    }
    co_return qmp->get_object();
}

asio::awaitable<void> connection::negotiate()
{
    json::object reply = co_await execute("qmp_capabilities");
    if (reply.contains("error")) {
        throw client_error("qmp_capabilities failed: " + error_text(reply));
    }
}

asio::awaitable<json::object> connection::execute(std::string_view command, json::object arguments)
{
    json::object req;
    req["execute"] = command;
    if (!arguments.empty()) {
        req["arguments"] = std::move(arguments);
    }
    co_return co_await impl_->roundtrip(std::move(req));
}

asio::awaitable<json::object> connection::send(json::object request)
{
    co_return co_await impl_->roundtrip(std::move(request));
}

void connection::on_event(std::function<void(const json::object&)> f)
{
    impl_->event_cb = std::move(f);
}

void connection::on_closed(std::function<void(const std::string&)> f)
{
    impl_->closed_cb = std::move(f);
}

bool connection::is_open() const noexcept
{
    return impl_->open;
}

void connection::close()
{
    if (impl_->open) {
        impl_->shut("connection closed");
    }
}

} // namespace bjd::client
