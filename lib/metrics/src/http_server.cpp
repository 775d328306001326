// SPDX-License-Identifier: MIT
// The metrics endpoint's HTTP/1.1 server: one request per connection, bounded in size and time.
#include "bjd/log.hpp"
#include "bjd/metrics/metrics.hpp"
#include "bjd/net/listener.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>


#include <chrono>
#include <stdexcept>
#include <system_error>
#include <string>

namespace bjd::metrics {

namespace asio = boost::asio;
using proto = asio::generic::stream_protocol;

namespace {

constexpr std::size_t max_request = 8192;
constexpr auto request_timeout = std::chrono::seconds(5);
constexpr unsigned max_clients = 32;

std::string response(const char* status, const char* type, const std::string& body, bool head)
{
    std::string r = std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + type +
                    "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
    if (!head)
        r += body;
    return r;
}

/// The response to the request head `req` (everything before the blank line).
std::string answer(std::string_view req, const std::function<std::string()>& body)
{
    auto eol = req.find("\r\n");
    std::string_view line = req.substr(0, eol);
    auto sp1 = line.find(' ');
    auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos ||
        !line.substr(sp2 + 1).starts_with("HTTP/1."))
        return response("400 Bad Request", "text/plain", "bad request\n", false);
    std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    bool head = method == "HEAD";
    if (method != "GET" && !head)
        return response("405 Method Not Allowed", "text/plain", "method not allowed\n", false);
    if (target != "/metrics" && !target.starts_with("/metrics?"))
        return response("404 Not Found", "text/plain", "not found\n", head);
    return response("200 OK", "text/plain; version=0.0.4; charset=utf-8", body(), head);
}

} // namespace

struct server::impl : std::enable_shared_from_this<server::impl> {
    impl(asio::io_context& l, std::function<std::string()> b) : loop(l), body(std::move(b)) {}

    asio::io_context& loop;
    std::function<std::string()> body;
    net::listener listener;
    unsigned clients = 0;
    bool stopped = false;

    static asio::awaitable<void> serve(std::shared_ptr<impl> self, std::shared_ptr<proto::socket> sock)
    {
        asio::steady_timer deadline(self->loop, request_timeout);
        deadline.async_wait([sock](boost::system::error_code ec) {
            if (!ec) {
                boost::system::error_code ignored;
                sock->close(ignored);
            }
        });
        std::string buf;
        auto [ec, n] = co_await asio::async_read_until(*sock, asio::dynamic_buffer(buf, max_request), "\r\n\r\n",
                                                       bjd::nothrow_awaitable);
        std::string reply;
        if (!ec && !self->stopped)
            reply = answer(std::string_view(buf).substr(0, n), self->body);
        else if (ec == asio::error::not_found)   // over max_request without a blank line
            reply = response("400 Bad Request", "text/plain", "request too large\n", false);
        if (!reply.empty())
            co_await asio::async_write(*sock, asio::buffer(reply), bjd::nothrow_awaitable);
        deadline.cancel();
        boost::system::error_code ignored;
        sock->shutdown(proto::socket::shutdown_both, ignored);
        sock->close(ignored);
    }

    static asio::awaitable<void> accept_loop(std::shared_ptr<impl> self)
    {
        while (!self->stopped) {
            auto [ec, s] = co_await self->listener.acceptors.front().async_accept(bjd::nothrow_awaitable);
            if (self->stopped || ec == asio::error::operation_aborted)
                co_return;
            if (ec) {   // EMFILE and friends: back off instead of spinning
                log::get("metrics")->warn("metrics accept failed: {}", ec.message());
                asio::steady_timer t(self->loop, std::chrono::milliseconds(100));
                co_await t.async_wait(bjd::nothrow_awaitable);
                continue;
            }
            if (self->clients >= max_clients)
                continue;   // drops (closes) the connection
            ++self->clients;
            asio::co_spawn(self->loop, serve(self, std::make_shared<proto::socket>(std::move(s))),
                           [self](std::exception_ptr e) {
                               --self->clients;
                               log::on_failure("metrics", "metrics client")(e);
                           });
        }
    }
};

server::server(asio::io_context& loop, std::function<std::string()> body)
    : impl_(std::make_shared<impl>(loop, std::move(body)))
{
}

server::~server() { stop(); }

unsigned short server::listen(std::string_view spec)
{
    auto fail = [&](const std::string& why) -> void {
        throw std::runtime_error("--metrics " + std::string(spec) + ": " + why);
    };
    net::listen_address addr;
    if (spec.starts_with("unix:") && spec.size() > 5) {
        addr = net::listen_address::unix_socket(std::string(spec.substr(5)));
    } else if (spec.starts_with("fd:") && spec.size() > 3) {
        try {
            addr = net::listen_address::inherited(net::inherited_fd(std::string(spec.substr(3))));
        } catch (const std::system_error& e) {
            fail(e.what());
        }
    } else if (spec.starts_with("tcp:")) {
        std::string_view hp = spec.substr(4);
        auto colon = hp.rfind(':');
        if (colon == std::string_view::npos)
            fail("expected tcp:HOST:PORT");
        boost::system::error_code ec;
        std::string host(hp.substr(0, colon));
        (void)asio::ip::make_address(host, ec);
        std::string port(hp.substr(colon + 1));
        if (ec || port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
            std::stoul(port) > 65535)
            fail("expected tcp:HOST:PORT with a numeric address and port");
        addr = net::listen_address::inet(host, port);
    } else {
        fail("expected unix:PATH, tcp:HOST:PORT or fd:NAME");
    }
    try {
        impl_->listener = net::open_listener(impl_->loop, addr);
    } catch (const std::system_error& e) {
        fail(e.what());
    }
    const unsigned short port = impl_->listener.port;
    asio::co_spawn(impl_->loop, impl::accept_loop(impl_),
                   log::on_failure("metrics", "metrics accept loop"));
    log::get("metrics")->info("metrics on {}", spec);
    return port;
}

void server::stop()
{
    if (impl_->stopped)
        return;
    impl_->stopped = true;
    impl_->listener.close();
}

} // namespace bjd::metrics
