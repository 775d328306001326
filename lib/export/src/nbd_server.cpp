// SPDX-License-Identifier: MIT
// NBD listener: binds unix or TCP sockets and accepts clients on the main loop.
#include "nbd_server.hpp"

#include "nbd_connection.hpp"

#include "bjd/log.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/socket.h>


namespace bjd::exports::detail {

using generic_proto = asio::generic::stream_protocol;

constexpr std::size_t send_buffer_bytes = 4u << 20;

struct nbd_server::state {
    manager* mgr;
    std::shared_ptr<connection_tracker> tracker;
    net::listener listener;
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


qapi::result<void> nbd_server::listen(const nbd_server_options& opts)
{
    auto& loop = state_->mgr->loop();
    state_->max_connections = opts.max_connections;
    try {
        state_->listener = net::open_listener(loop, opts.addr);
    } catch (const std::system_error& e) {
        return qapi::generic(e.what());
    }
    address_ = state_->listener.description;
    for (std::size_t i = 0; i < state_->listener.acceptors.size(); ++i) {
        asio::co_spawn(loop, accept_loop(state_, i), log::on_failure("nbd", "nbd accept loop"));
    }
    log::get("nbd")->info("NBD server listening on {}", address_);
    return {};
}

void nbd_server::stop()
{
    if (state_->stopped)
        return;
    state_->stopped = true;
    state_->listener.close();
    state_->tracker->changed.cancel();   // wakes accept loops waiting for a free slot
}

asio::awaitable<void> nbd_server::accept_loop(std::shared_ptr<state> st, std::size_t index)
{
    while (!st->stopped) {
        // Like QEMU (nbd_update_server_watch), a server at max-connections stops accepting:
        // further clients wait in the listen backlog until a connection ends.
        while (!st->stopped && st->max_connections && st->live_connections() >= st->max_connections)
            co_await st->tracker->changed.async_wait(bjd::nothrow_awaitable);
        if (st->stopped)
            break;
        auto [ec, sock] = co_await st->listener.acceptors[index].async_accept(bjd::nothrow_awaitable);
        if (st->stopped)
            break;
        if (ec) {
            if (ec == asio::error::operation_aborted)
                break;
            // EMFILE and friends: back off briefly rather than spin.
            log::get("nbd")->warn("nbd accept failed: {}", ec.message());
            asio::steady_timer t(st->listener.acceptors[index].get_executor(), std::chrono::milliseconds(100));
            co_await t.async_wait(bjd::nothrow_awaitable);
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
