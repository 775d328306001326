// SPDX-License-Identifier: MIT
/// \file
/// QMP sessions: the protocol-state base and the socket-backed implementation.
#include "socket_session.hpp"

#include "bjd/log.hpp"
#include "bjd/qmp/context.hpp"
#include "bjd/qmp/dispatch.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <vector>

namespace bjd::qmp {

namespace asio = boost::asio;

namespace {
std::atomic<std::uint64_t> next_session_id{1};

void log_exception(std::exception_ptr e, const char* what)
{
    if (!e) {
        return;
    }
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        log::get("qmp")->error("session {} failed: {}", what, ex.what());
    } catch (...) {
        log::get("qmp")->error("session {} failed", what);
    }
}
} // namespace

session::session(bool oob_offered) : id_(next_session_id++)
{
    state_.oob_offered = oob_offered;
}

socket_session::socket_session(socket_type sock, hooks h, bool oob_offered)
    : session(oob_offered), sock_(std::move(sock)), hooks_(std::move(h))
{
}

void socket_session::start(std::string greeting)
{
    send(std::move(greeting));
    asio::co_spawn(sock_.get_executor(), read_loop(shared_from_this()),
                   [](std::exception_ptr e) { log_exception(e, "reader"); });
}

void socket_session::send(std::string wire)
{
    if (dead_) {
        return;
    }
    outbuf_ += wire;
    if (!writing_) {
        writing_ = true;
        asio::co_spawn(sock_.get_executor(), write_loop(shared_from_this()),
                       [](std::exception_ptr e) { log_exception(e, "writer"); });
    }
}

asio::awaitable<void> socket_session::write_loop(std::shared_ptr<socket_session> self)
{
    while (!self->outbuf_.empty() && !self->dead_) {
        std::string chunk;
        chunk.swap(self->outbuf_);
        auto [ec, n] = co_await asio::async_write(self->sock_, asio::buffer(chunk), bjd::nothrow_awaitable);
        if (ec) {
            log::get("qmp")->debug("session {}: write failed: {}", self->id(), ec.message());
            self->dead_ = true;
            self->outbuf_.clear();
            self->close();
        }
    }
    self->writing_ = false;
}

asio::awaitable<void> socket_session::read_loop(std::shared_ptr<socket_session> self)
{
    std::vector<char> buf(64 * 1024);
    std::vector<json_message> msgs;
    while (!self->stopping_ && !self->dead_) {
        auto [ec, n] = co_await self->sock_.async_read_some(asio::buffer(buf), bjd::nothrow_awaitable);
        if (ec) {
            break;   // EOF, reset, or closed by us
        }
        msgs.clear();
        self->streamer_.feed(std::string_view(buf.data(), n), msgs);
        // Strictly in order, one at a time; no reading meanwhile.
        for (json_message& m : msgs) {
            if (self->dead_) {
                break;
            }
            boost::json::object rsp = co_await self->hooks_.dispatch->handle(*self->hooks_.ctx, *self, std::move(m));
            self->send(to_wire_message(rsp, self->hooks_.write_opts));
        }
    }
    // The client may have half-closed after its last request: deliver what is queued.
    co_await self->flush(std::chrono::milliseconds(2000));
    self->close();
    self->finish();
}

void socket_session::stop_reading()
{
    stopping_ = true;
    boost::system::error_code ec;
    sock_.shutdown(socket_type::shutdown_receive, ec);
}

asio::awaitable<void> socket_session::flush(std::chrono::milliseconds limit)
{
    auto deadline = std::chrono::steady_clock::now() + limit;
    asio::steady_timer timer(sock_.get_executor());
    while (writing_ && !dead_ && std::chrono::steady_clock::now() < deadline) {
        timer.expires_after(std::chrono::milliseconds(5));
        co_await timer.async_wait(bjd::nothrow_awaitable);
    }
}

void socket_session::close()
{
    dead_ = true;
    boost::system::error_code ec;
    sock_.shutdown(socket_type::shutdown_both, ec);
    sock_.close(ec);
}

void socket_session::finish()
{
    if (finished_) {
        return;
    }
    finished_ = true;
    if (hooks_.on_closed) {
        hooks_.on_closed(id());
    }
}

} // namespace bjd::qmp
