// SPDX-License-Identifier: MIT
// Fuzz target: what an NBD client sends. The input is the client's whole byte stream (client
// flags, options, then transmission requests with their payloads), written into one end of a
// socket pair whose other end the export manager serves, exactly as it serves an accepted
// connection. The stream then ends (EOF); whatever the server answers is read and dropped. The
// connection must end without a crash, UB or hang, and give the export up afterwards.
#include "fuzz_util.hpp"

#include "bjd/export/manager.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <filesystem>
#include <unistd.h>

namespace {

using namespace bjd;
namespace asio = boost::asio;
using stream = asio::local::stream_protocol;

constexpr std::uint64_t disk_size = 64u << 10;

struct server {
    asio::io_context io;
    exports::manager mgr{io, [](const std::string&) {}};
    std::shared_ptr<fuzz::mem_file> disk =
        std::make_shared<fuzz::mem_file>("disk", std::vector<std::byte>(disk_size), false, disk_size);

    server()
    {
        exports::nbd_server_options o;
        o.addr.path = (std::filesystem::temp_directory_path() /
                       ("bjd-fuzz-nbd-" + std::to_string(::getpid()) + ".sock")).string();
        std::filesystem::remove(o.addr.path);
        if (!mgr.start_server(o))
            std::abort();
        std::filesystem::remove(o.addr.path);   // nobody connects there: clients come from pairs
        exports::export_options e;
        e.id = "e0";
        e.node_name = "disk";
        e.name = "disk";
        e.writable = true;
        e.description = "fuzz disk";
        if (!mgr.add(e, disk))
            std::abort();
    }
};

asio::awaitable<void> send_all(stream::socket& s, std::span<const std::uint8_t> bytes)
{
    (void)co_await asio::async_write(s, asio::buffer(bytes.data(), bytes.size()),
                                     asio::as_tuple(asio::use_awaitable));
    boost::system::error_code ec;
    s.shutdown(stream::socket::shutdown_send, ec);
}

asio::awaitable<void> drain(stream::socket& s)
{
    std::vector<std::byte> buf(64u << 10);
    for (;;) {
        auto [ec, n] = co_await s.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
        if (ec)
            break;
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size > (256u << 10))
        return 0;
    fuzz::quiet_logs();
    static server* srv = new server;   // one server for the process, like the daemon's
    auto& io = srv->io;
    std::fill(srv->disk->data_.begin(), srv->disk->data_.end(), std::byte{0});

    stream::socket client(io), served(io);
    asio::local::connect_pair(client, served);
    srv->mgr.serve(asio::generic::stream_protocol::socket(io, asio::generic::stream_protocol(AF_UNIX, 0),
                                                          served.release()));
    bool sent = false, drained = false;
    asio::co_spawn(io, send_all(client, {data, size}), [&](std::exception_ptr e) {
        if (e)
            std::rethrow_exception(e);
        sent = true;
    });
    asio::co_spawn(io, drain(client), [&](std::exception_ptr e) {
        if (e)
            std::rethrow_exception(e);
        drained = true;
    });
    io.restart();
    while (!(sent && drained) && io.run_one() > 0) {}
    if (!(sent && drained))
        std::abort();
    // Let the connection finish tearing down (deferred deletions, export detach).
    io.restart();
    io.poll();
    return 0;
}
