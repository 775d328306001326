// SPDX-License-Identifier: MIT
#pragma once
// Test support for the NBD server: an in-memory node and a minimal coroutine NBD client that
// talks to the server over a socket pair, all on one io_context driven by the test.
#include "bjd/crypto/tls_session.hpp"
#include "bjd/export/manager.hpp"
#include "bjd/nbd/protocol.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

namespace bjd::test {

namespace asio = boost::asio;
namespace nbd = bjd::nbd;
using bytes = std::vector<std::byte>;

/// A memory-backed node: 4 KiB blocks, each allocated (data) or a hole (reads zero).
class mem_node final : public block::node {
public:
    mem_node(std::string name, std::uint64_t size, bool read_only = false)
        : node(block::node_options{.name = std::move(name), .read_only = read_only, .discard_unmap = true})
        , data_(size), allocated_((size + 4095) / 4096, false) {}
    std::string_view driver() const noexcept override { return "null-co"; }
    std::uint64_t size() const noexcept override { return data_.size(); }

    std::vector<std::byte> data_;
    std::vector<bool> allocated_;
    unsigned flushes = 0, fua_writes = 0, writes = 0, zero_writes = 0, discards = 0;
    block::zero_flags last_zero_flags;
    /// While set, writes wait on it until it is cancelled: a test's way to keep requests in
    /// flight.
    asio::steady_timer* hold = nullptr;

protected:
    asio::awaitable<result<void>> do_read(std::uint64_t off, std::span<std::byte> buf) override
    {
        std::memcpy(buf.data(), data_.data() + off, buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool fua) override
    {
        if (hold) {
            boost::system::error_code ec;
            co_await hold->async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
        std::memcpy(data_.data() + off, buf.data(), buf.size());
        mark(off, buf.size(), true);
        ++writes;
        fua_writes += fua;
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t off, std::uint64_t len, block::zero_flags f) override
    {
        std::memset(data_.data() + off, 0, len);
        ++zero_writes;
        last_zero_flags = f;
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t off, std::uint64_t len) override
    {
        std::memset(data_.data() + off, 0, len);
        mark(off, len, false);
        ++discards;
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_flush() override
    {
        ++flushes;
        co_return result<void>{};
    }
    asio::awaitable<result<block::extent>> do_block_status(std::uint64_t off, std::uint64_t len) override
    {
        std::size_t b = off / 4096;
        bool a = allocated_[b];
        std::uint64_t end = std::min<std::uint64_t>(off + len, data_.size());
        std::uint64_t pos = std::min<std::uint64_t>((b + 1) * 4096, end);
        while (pos < end && allocated_[pos / 4096] == a)
            pos = std::min<std::uint64_t>(pos + 4096, end);
        unsigned flags = a ? (block::status_data | block::status_allocated) : block::status_zero;
        co_return block::extent{flags, pos - off};
    }

private:
    void mark(std::uint64_t off, std::uint64_t len, bool v)
    {
        for (std::uint64_t b = off / 4096; b * 4096 < off + len; ++b)
            allocated_[b] = v;
    }
};

inline bytes pattern(std::size_t n, unsigned seed)
{
    bytes b(n);
    for (std::size_t i = 0; i < n; ++i)
        b[i] = std::byte((i * 131 + seed * 7 + (i >> 9)) & 0xff);
    return b;
}

/// Runs `aw` to completion on `io` (and whatever else it spawned until idle); rethrows.
template <class T>
T run(asio::io_context& io, asio::awaitable<T> aw)
{
    std::exception_ptr ex;
    std::optional<T> out;
    asio::co_spawn(io, std::move(aw), [&](std::exception_ptr e, T v) { ex = e; out = std::move(v); });
    io.restart();
    while (!out && !ex && io.run_one() > 0) {}
    if (ex)
        std::rethrow_exception(ex);
    if (!out)
        throw std::runtime_error("coroutine did not finish");
    return std::move(*out);
}

inline void run(asio::io_context& io, asio::awaitable<void> aw)
{
    std::exception_ptr ex;
    bool done = false;
    asio::co_spawn(io, std::move(aw), [&](std::exception_ptr e) { ex = e; done = true; });
    io.restart();
    while (!done && io.run_one() > 0) {}
    if (ex)
        std::rethrow_exception(ex);
    if (!done)
        throw std::runtime_error("coroutine did not finish");
}

/// Lets everything runnable run (connection teardown, deferred deletions).
inline void settle(asio::io_context& io)
{
    io.restart();
    io.poll();
}

/// The client end of a socket pair whose server end is served by `m`.
struct client_conn {
    asio::local::stream_protocol::socket sock;

    explicit client_conn(exports::manager& m) : sock(m.loop())
    {
        asio::local::stream_protocol::socket server(m.loop());
        asio::local::connect_pair(sock, server);
        asio::generic::stream_protocol::socket g(m.loop(), asio::generic::stream_protocol(AF_UNIX, 0),
                                                 server.release());
        m.serve(std::move(g));
    }

    // After starttls(): the same socket as a generic one, and the TLS session over it.
    std::unique_ptr<asio::generic::stream_protocol::socket> tls_sock;
    std::unique_ptr<crypto::tls_session> tls;

    asio::awaitable<bytes> read(std::size_t n)
    {
        bytes b(n);
        if (tls) {
            if (auto ec = co_await tls->read(asio::buffer(b)))
                throw boost::system::system_error(ec);
            co_return b;
        }
        co_await asio::async_read(sock, asio::buffer(b), asio::use_awaitable);
        co_return b;
    }
    asio::awaitable<void> write(const bytes& b)
    {
        if (tls) {
            if (auto ec = co_await tls->write(asio::buffer(b)))
                throw boost::system::system_error(ec);
            co_return;
        }
        co_await asio::async_write(sock, asio::buffer(b), asio::use_awaitable);
    }
    /// True when the server closed the connection.
    asio::awaitable<bool> at_eof()
    {
        std::byte x;
        if (tls)
            co_return bool((co_await tls->read_some(asio::buffer(&x, 1))).first);
        auto [ec, n] = co_await asio::async_read(sock, asio::buffer(&x, 1), asio::as_tuple(asio::use_awaitable));
        co_return bool(ec);
    }
    /// NBD_OPT_STARTTLS (after greet()), then the TLS handshake with client credentials:
    /// "" when TLS is up, else what failed.
    asio::awaitable<std::string> starttls(std::shared_ptr<const crypto::tls_creds> creds)
    {
        co_await option(nbd::opt_starttls, {});
        auto r = co_await option_reply();
        if (r.type != nbd::rep_ack)
            co_return "STARTTLS refused";
        tls_sock = std::make_unique<asio::generic::stream_protocol::socket>(
            sock.get_executor(), asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), sock.release());
        auto t = crypto::tls_session::create(std::move(creds), *tls_sock, "localhost");
        if (!t)
            co_return t.error().desc;
        tls = std::move(*t);
        co_return co_await tls->handshake();
    }

    /// Reads the greeting and sends client flags.
    asio::awaitable<bytes> greet(std::uint32_t flags = nbd::flag_c_fixed_newstyle | nbd::flag_c_no_zeroes)
    {
        bytes g = co_await read(18);
        bytes f;
        nbd::writer(f).u32(flags);
        co_await write(f);
        co_return g;
    }
    asio::awaitable<void> option(std::uint32_t opt, const bytes& data)
    {
        bytes o;
        nbd::writer(o).u64(nbd::opts_magic).u32(opt).u32(std::uint32_t(data.size()));
        o.insert(o.end(), data.begin(), data.end());
        co_await write(o);
    }
    struct opt_reply { std::uint32_t option, type; bytes data; };
    asio::awaitable<opt_reply> option_reply()
    {
        bytes h = co_await read(20);
        if (nbd::load_be64(h.data()) != nbd::rep_magic)
            throw std::runtime_error("bad option reply magic");
        opt_reply r{nbd::load_be32(h.data() + 8), nbd::load_be32(h.data() + 12), {}};
        r.data = co_await read(nbd::load_be32(h.data() + 16));
        co_return r;
    }
    static bytes go_data(std::string_view name, std::vector<std::uint16_t> infos = {})
    {
        bytes d;
        nbd::writer w(d);
        w.u32(std::uint32_t(name.size())).bytes(name).u16(std::uint16_t(infos.size()));
        for (auto i : infos)
            w.u16(i);
        return d;
    }
    /// Full handshake with structured replies and base:allocation, then GO.
    asio::awaitable<void> open(std::string_view name, bool structured = true)
    {
        co_await greet();
        if (structured) {
            co_await option(nbd::opt_structured_reply, {});
            (void)co_await option_reply();
            bytes d;
            nbd::writer(d).u32(std::uint32_t(name.size())).bytes(name).u32(1)
                .u32(std::uint32_t(nbd::base_allocation.size())).bytes(nbd::base_allocation);
            co_await option(nbd::opt_set_meta_context, d);
            while ((co_await option_reply()).type != nbd::rep_ack) {}
        }
        co_await option(nbd::opt_go, go_data(name));
        for (;;) {
            auto r = co_await option_reply();
            if (r.type == nbd::rep_ack)
                break;
            if (r.type & 0x80000000u)
                throw std::runtime_error("GO refused");
        }
    }
    asio::awaitable<void> request(std::uint16_t type, std::uint64_t cookie, std::uint64_t off, std::uint32_t len,
                                  std::uint16_t flags = 0, const bytes* payload = nullptr)
    {
        bytes b;
        nbd::encode_request(b, {flags, type, cookie, off, len});
        if (payload)
            b.insert(b.end(), payload->begin(), payload->end());
        co_await write(b);
    }
    struct simple { std::uint32_t error; std::uint64_t cookie; };
    asio::awaitable<simple> simple_reply()
    {
        bytes h = co_await read(16);
        if (nbd::load_be32(h.data()) != nbd::simple_reply_magic)
            throw std::runtime_error("expected a simple reply");
        co_return simple{nbd::load_be32(h.data() + 4), nbd::load_be64(h.data() + 8)};
    }
    struct chunk { std::uint16_t flags, type; std::uint64_t cookie; bytes payload; };
    asio::awaitable<chunk> chunk_reply()
    {
        bytes h = co_await read(20);
        if (nbd::load_be32(h.data()) != nbd::structured_reply_magic)
            throw std::runtime_error("expected a structured reply");
        chunk c{nbd::load_be16(h.data() + 4), nbd::load_be16(h.data() + 6), nbd::load_be64(h.data() + 8), {}};
        c.payload = co_await read(nbd::load_be32(h.data() + 16));
        co_return c;
    }
};

/// A manager with a running server on a private unix socket and one node exported.
struct fixture {
    asio::io_context io;
    std::vector<std::string> deleted;
    exports::manager mgr{io, [this](const std::string& id) { deleted.push_back(id); }};
    std::string sock_path;
    std::shared_ptr<mem_node> disk = std::make_shared<mem_node>("disk", 1u << 20);

    explicit fixture(bool writable = true)
    {
        sock_path = (std::filesystem::temp_directory_path() / ("bjd-nbd-" + std::to_string(::getpid()) + ".sock")).string();
        exports::nbd_server_options o;
        o.addr.path = sock_path;
        if (!mgr.start_server(o))
            throw std::runtime_error("cannot start server");
        exports::export_options e;
        e.id = "e0";
        e.node_name = "disk";
        e.writable = writable;
        e.description = "test disk";
        if (!mgr.add(e, disk))
            throw std::runtime_error("cannot add export");
    }
    ~fixture()
    {
        run(io, mgr.shutdown());
    }
};

} // namespace bjd::test
