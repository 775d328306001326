// SPDX-License-Identifier: MIT
// nbd: a protocol node whose data lives in an export of an NBD server (QEMU's block/nbd.c
// options and errors). The connection may break; within reconnect-delay the node reconnects
// and sends the requests that were in flight again, after it they fail with EIO.
//
// multi-conn (a blockjobd extension): when the server sets NBD_FLAG_CAN_MULTI_CONN, a flush
// on any connection covers the writes completed on all of them (the NBD protocol's
// doc/proto.md), so requests may be spread over several connections to the same export.
// The extra connections are made after the first, in the background; they are one group: a
// break of any takes the others down and all reconnect together.
#include "bjd/block/driver.hpp"
#include "session.hpp"

#include "bjd/io/buffer.hpp"
#include "bjd/log.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>

namespace bjd::block {
namespace {

using namespace std::chrono_literals;
using nbd_client::export_info;
using nbd_client::outcome;
using nbd_client::session;
namespace wire = bjd::nbd;

/// Write-zeroes and trim lengths go up to this per request (the wire length is 32 bits).
constexpr std::uint64_t max_zero_request = 1u << 30;
/// An extra multi-conn connection that has not finished its handshake by then is given up
/// (a server at its max-connections keeps it waiting).
constexpr auto extra_connection_timeout = 5s;

/// A connection attempt: connect, then handshake.
struct attempt {
    std::shared_ptr<session> s;
    std::string error;
    bool connect_failed = false;   ///< the socket did not connect (retried within open-timeout)
};

asio::awaitable<attempt> connect_once(asio::any_io_executor ex, const nbd_open_options& o, const std::string& log_name)
{
    attempt a;
    auto c = co_await nbd_client::connect_plain(o.server);
    if (!c.s) {
        a.error = std::move(c.error);
        a.connect_failed = true;
        co_return a;
    }
    auto h = co_await nbd_client::handshake(c.s, o.export_name, o.tls_creds, o.tls_hostname, o.meta_context);
    if (!h.error.empty()) {
        c.s->close();
        a.error = std::move(h.error);
        co_return a;
    }
    a.s = std::make_shared<session>(ex, std::move(c.s), h.info, log_name);
    co_return a;
}

/// The connections shared by the node and the coroutines that outlive a request.
class client : public std::enable_shared_from_this<client> {
public:
    enum class state { connected, reconnecting, failed, closed };

    client(asio::any_io_executor ex, nbd_open_options o, std::string name)
        : ex_(ex), opts_(std::move(o)), name_(std::move(name)), changed_(ex, asio::steady_timer::time_point::max()),
          delay_timer_(ex)
    {
    }

    void adopt(std::shared_ptr<session> s, bool writable)
    {
        info_ = s->info();
        writable_ = writable;
        state_ = state::connected;
        set_session(std::move(s));
    }

    const export_info& info() const noexcept { return info_; }
    state current() const noexcept { return state_; }
    static const char* state_name(state s)
    {
        switch (s) {
        case state::connected: return "connected";
        case state::reconnecting: return "reconnecting";
        case state::failed: return "disconnected";
        case state::closed: return "closed";
        }
        return "?";
    }

    connection_info describe() const
    {
        return connection_info{.state = state_name(state_),
                               .server = opts_.server.describe(),
                               .connections = state_ == state::connected ? int(sessions_.size()) : 0,
                               .tls = opts_.tls_creds != nullptr,
                               .reconnects = reconnects_};
    }

    /// Sends a request, again on a new connection when the connection breaks before the
    /// reply, as long as the reconnect delay allows; EIO after it.
    asio::awaitable<outcome> submit(wire::request hdr, std::span<const std::byte> payload = {},
                                    std::span<std::byte> into = {}, extent* status = nullptr)
    {
        auto self = shared_from_this();
        for (;;) {
            while (state_ == state::reconnecting)
                co_await changed_.async_wait(nothrow_awaitable);
            if (state_ != state::connected)
                co_return outcome{EIO, false};
            auto s = sessions_[next_++ % sessions_.size()];
            auto out = co_await s->request(hdr, payload, into, status);
            if (!out.lost)
                co_return out;
        }
    }

    void close()
    {
        if (state_ == state::closed)
            return;
        set_state(state::closed);
        delay_timer_.cancel();
        drop_sessions(nullptr);
    }

private:
    void set_state(state s)
    {
        if (s != state_)
            log::with_fields(s == state::connected || s == state::closed ? spdlog::level::info : spdlog::level::warn,
                             "block",
                             fmt::format("node '{}': nbd connection {} -> {}", name_, state_name(state_), state_name(s)),
                             {{"NODE", name_}, {"NBD_STATE", state_name(s)}});
        state_ = s;
        changed_.cancel();
    }

    /// The first connection of a group; the others follow in the background.
    void set_session(std::shared_ptr<session> s)
    {
        add_session(std::move(s));
        set_state(state::connected);
        if (opts_.connections > 1 && info_.has(wire::tflag_can_multi_conn))
            asio::co_spawn(ex_, widen(shared_from_this(), group_),
                           asio::bind_cancellation_slot(widen_cancel_.slot(), log::on_failure("block", "nbd multi-conn")));
    }

    void add_session(std::shared_ptr<session> s)
    {
        std::weak_ptr<client> weak = weak_from_this();
        s->start([weak](session* lost) {
            if (auto self = weak.lock())
                self->lost(lost);
        });
        sessions_.push_back(std::move(s));
    }

    /// Closes every connection but `except` (whose stream is already gone), cancels the
    /// extra connections still being made, and starts a new group.
    void drop_sessions(session* except)
    {
        ++group_;
        widen_cancel_.emit(asio::cancellation_type::terminal);
        for (auto& s : std::exchange(sessions_, {}))
            if (s.get() != except)
                s->close();
    }

    /// The extra connections of multi-conn, one after the other, until `opts_.connections`
    /// are in use; any that fails or takes too long is given up.
    static asio::awaitable<void> widen(std::shared_ptr<client> self, std::uint64_t group)
    {
        using namespace asio::experimental::awaitable_operators;
        const std::string log_name = "node '" + self->name_ + "'";
        while (self->group_ == group && self->state_ == state::connected && self->sessions_.size() < self->opts_.connections) {
            asio::steady_timer timeout(self->ex_, extra_connection_timeout);
            auto r = co_await (connect_once(self->ex_, self->opts_, log_name) || timeout.async_wait(nothrow_awaitable));
            if (self->group_ != group || self->state_ != state::connected) {   // dropped or closed meanwhile
                if (r.index() == 0 && std::get<0>(r).s)
                    std::get<0>(r).s->close();
                co_return;
            }
            if (r.index() != 0) {
                log::get("block")->info("{}: an extra nbd connection did not complete within {} s; using {}", log_name,
                                        extra_connection_timeout.count(), self->sessions_.size());
                co_return;
            }
            auto a = std::move(std::get<0>(r));
            if (!a.s) {
                log::get("block")->info("{}: extra nbd connection failed ({}); using {}", log_name, a.error,
                                        self->sessions_.size());
                co_return;
            }
            if (a.s->info().size != self->info_.size || !a.s->info().has(wire::tflag_can_multi_conn)) {
                a.s->close();
                co_return;
            }
            self->add_session(std::move(a.s));
        }
        if (self->group_ == group && self->sessions_.size() > 1)
            log::get("block")->info("{}: {} nbd connections (the server allows multi-conn)", log_name,
                                    self->sessions_.size());
    }

    void lost(session* s)
    {
        if (state_ == state::closed ||
            std::none_of(sessions_.begin(), sessions_.end(), [s](const auto& p) { return p.get() == s; }))
            return;
        // One break takes the group down: the requests waiting on the other connections come
        // back lost and are sent again once the node has connected again.
        drop_sessions(s);
        if (opts_.reconnect_delay == 0) {
            set_state(state::failed);
        } else {
            set_state(state::reconnecting);
            delay_timer_.expires_after(std::chrono::seconds(opts_.reconnect_delay));
            std::weak_ptr<client> weak = weak_from_this();
            delay_timer_.async_wait([weak](boost::system::error_code ec) {
                auto self = weak.lock();
                if (!ec && self && self->state_ == state::reconnecting)
                    self->set_state(state::failed);   // waiting requests fail with EIO
            });
        }
        asio::co_spawn(ex_, reconnect(shared_from_this()), log::on_failure("block", "nbd reconnect"));
    }

    /// Keeps trying to connect (also after the delay: QEMU does too) until connected or closed.
    static asio::awaitable<void> reconnect(std::shared_ptr<client> self)
    {
        auto backoff = 50ms;
        asio::steady_timer t(self->ex_);
        while (self->state_ == state::reconnecting || self->state_ == state::failed) {
            auto a = co_await connect_once(self->ex_, self->opts_, "node '" + self->name_ + "'");
            if (self->state_ == state::closed || self->state_ == state::connected) {
                if (a.s)
                    a.s->close();
                co_return;
            }
            if (a.s) {
                const auto& ni = a.s->info();
                if (ni.size != self->info_.size)
                    a.error = fmt::format("the export's size changed from {} to {}", self->info_.size, ni.size);
                else if (self->writable_ && ni.has(wire::tflag_read_only))
                    a.error = "the export became read-only";
                if (a.error.empty()) {
                    self->delay_timer_.cancel();
                    self->info_ = ni;
                    ++self->reconnects_;
                    self->set_session(std::move(a.s));
                    co_return;
                }
                a.s->close();
            }
            log::get("block")->debug("node '{}': nbd reconnect failed: {}", self->name_, a.error);
            t.expires_after(backoff);
            co_await t.async_wait(nothrow_awaitable);
            backoff = std::min<std::chrono::milliseconds>(backoff * 2, 1000ms);
        }
    }

    asio::any_io_executor ex_;
    nbd_open_options opts_;
    std::string name_;
    export_info info_;
    bool writable_ = false;
    state state_ = state::failed;
    std::vector<std::shared_ptr<session>> sessions_;   ///< non-empty while connected
    std::size_t next_ = 0;                             ///< round robin over sessions_
    std::uint64_t group_ = 0;                          ///< bumped when the sessions are dropped
    std::uint64_t reconnects_ = 0;
    asio::cancellation_signal widen_cancel_;           ///< stops the extra connections being made
    asio::steady_timer changed_;       ///< expiry never reset: cancel() wakes every waiter
    asio::steady_timer delay_timer_;
};

std::string nbd_filename(const nbd_open_options& o)
{
    // QEMU's nbd_refresh_filename.
    const auto& a = o.server;
    const bool has_export = !o.export_name.empty();
    if (a.unix_socket)
        return has_export ? "nbd+unix:///" + o.export_name + "?socket=" + a.path : "nbd+unix://?socket=" + a.path;
    if (a.host.find(':') != std::string::npos)
        return {};
    return has_export ? "nbd://" + a.host + ":" + a.port + "/" + o.export_name : "nbd://" + a.host + ":" + a.port;
}

class nbd_node final : public node {
public:
    nbd_node(node_options o, nbd_open_options opts, std::shared_ptr<client> c)
        : node(std::move(o)), opts_(std::move(opts)), client_(std::move(c))
    {
    }
    ~nbd_node() override { client_->close(); }

    std::string_view driver() const noexcept override { return "nbd"; }
    std::optional<connection_info> connection() const override { return client_->describe(); }
    std::string filename() const override { return nbd_filename(opts_); }
    std::uint64_t size() const noexcept override { return client_->info().size; }
    std::uint32_t request_alignment() const noexcept override { return client_->info().min_block; }
    bool can_discard() const noexcept override { return true; }

protected:
    const export_info& info() const noexcept { return client_->info(); }

    static result<void> done(const outcome& o)
    {
        if (o.err)
            return errno_error(o.err);
        return {};
    }

    bool aligned(std::uint64_t off, std::uint64_t len) const noexcept
    {
        const std::uint32_t a = info().min_block;
        return a <= 1 || ((off | len) & (a - 1)) == 0;
    }

    /// READs of at most max_block bytes each.
    asio::awaitable<result<void>> read_aligned(std::uint64_t off, std::span<std::byte> buf)
    {
        while (!buf.empty()) {
            const std::uint32_t n = std::uint32_t(std::min<std::uint64_t>(buf.size(), info().max_block));
            wire::request r{.flags = 0, .type = wire::cmd_read, .cookie = 0, .offset = off, .length = n};
            auto o = co_await client_->submit(r, {}, buf.first(n));
            if (o.err)
                co_return errno_error(o.err);
            off += n;
            buf = buf.subspan(n);
        }
        co_return result<void>{};
    }

    asio::awaitable<result<void>> write_aligned(std::uint64_t off, std::span<const std::byte> buf, bool fua)
    {
        const bool send_fua = fua && info().has(wire::tflag_send_fua);
        while (!buf.empty()) {
            const std::uint32_t n = std::uint32_t(std::min<std::uint64_t>(buf.size(), info().max_block));
            wire::request r{.flags = std::uint16_t(send_fua ? wire::cmd_flag_fua : 0), .type = wire::cmd_write,
                            .cookie = 0, .offset = off, .length = n};
            auto o = co_await client_->submit(r, buf.first(n));
            if (o.err)
                co_return errno_error(o.err);
            off += n;
            buf = buf.subspan(n);
        }
        if (fua && !send_fua)
            co_return co_await do_flush();
        co_return result<void>{};
    }

    /// The aligned range around [off, off+len).
    std::pair<std::uint64_t, std::uint64_t> widen(std::uint64_t off, std::uint64_t len) const noexcept
    {
        const std::uint64_t a = info().min_block;
        const std::uint64_t start = off / a * a;
        const std::uint64_t end = std::min<std::uint64_t>((off + len + a - 1) / a * a, size());
        return {start, end - start};
    }

    asio::awaitable<result<void>> do_read(std::uint64_t off, std::span<std::byte> buf) override
    {
        if (aligned(off, buf.size()))
            co_return co_await read_aligned(off, buf);
        auto [start, len] = widen(off, buf.size());
        io::aligned_buffer tmp(len);
        auto r = co_await read_aligned(start, tmp.span());
        if (r)
            std::memcpy(buf.data(), tmp.data() + (off - start), buf.size());
        co_return r;
    }

    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool fua) override
    {
        if (aligned(off, buf.size()))
            co_return co_await write_aligned(off, buf, fua);
        // Read-modify-write of the edge blocks the server cannot take apart.
        auto [start, len] = widen(off, buf.size());
        io::aligned_buffer tmp(len);
        if (auto r = co_await read_aligned(start, tmp.span()); !r)
            co_return r;
        std::memcpy(tmp.data() + (off - start), buf.data(), buf.size());
        co_return co_await write_aligned(start, tmp.span(), fua);
    }

    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t off, std::uint64_t len, zero_flags f) override
    {
        if (!info().has(wire::tflag_send_write_zeroes) || !aligned(off, len))
            co_return errno_error(ENOTSUP);   // the block layer writes zero buffers
        if (f.no_fallback && !info().has(wire::tflag_send_fast_zero))
            co_return errno_error(ENOTSUP);
        std::uint16_t flags = 0;
        if (!f.may_unmap)
            flags |= wire::cmd_flag_no_hole;
        if (f.no_fallback)
            flags |= wire::cmd_flag_fast_zero;
        co_return co_await ranged(wire::cmd_write_zeroes, flags, off, len);
    }

    asio::awaitable<result<void>> do_discard(std::uint64_t off, std::uint64_t len) override
    {
        if (!info().has(wire::tflag_send_trim))
            co_return errno_error(ENOTSUP);
        // Trim is advisory: only whole blocks are passed on.
        const std::uint64_t a = info().min_block;
        const std::uint64_t start = (off + a - 1) / a * a;
        const std::uint64_t end = (off + len) / a * a;
        if (end <= start)
            co_return result<void>{};
        co_return co_await ranged(wire::cmd_trim, 0, start, end - start);
    }

    asio::awaitable<result<void>> do_flush() override
    {
        if (!info().has(wire::tflag_send_flush))
            co_return result<void>{};
        wire::request r{.flags = 0, .type = wire::cmd_flush, .cookie = 0, .offset = 0, .length = 0};
        co_return done(co_await client_->submit(r));
    }

    asio::awaitable<result<extent>> do_block_status(std::uint64_t off, std::uint64_t len) override
    {
        if (!info().allocation)
            co_return extent{status_data | status_allocated, len};
        const std::uint64_t a = std::max<std::uint32_t>(info().min_block, 1);
        std::uint64_t n = std::min<std::uint64_t>(len, max_zero_request);
        // The server answers in whole blocks: ask for the blocks around the range.
        const std::uint64_t start = off / a * a;
        std::uint64_t end = std::min<std::uint64_t>((off + n + a - 1) / a * a, size());
        wire::request r{.flags = wire::cmd_flag_req_one, .type = wire::cmd_block_status, .cookie = 0,
                        .offset = start, .length = std::uint32_t(end - start)};
        extent e{status_data | status_allocated, end - start};
        auto o = co_await client_->submit(r, {}, {}, &e);
        if (o.err)
            co_return errno_error(o.err);
        // Back to the caller's offset; an extent that ends before it says nothing about it.
        if (start + e.length <= off)
            co_return extent{status_data | status_allocated, std::min<std::uint64_t>(len, a - (off - start))};
        e.length = std::min<std::uint64_t>(start + e.length - off, len);
        co_return e;
    }

private:
    /// WRITE_ZEROES / TRIM, in requests of at most `max_zero_request` bytes.
    asio::awaitable<result<void>> ranged(std::uint16_t type, std::uint16_t flags, std::uint64_t off, std::uint64_t len)
    {
        const std::uint64_t a = std::max<std::uint32_t>(info().min_block, 1);
        const std::uint64_t step = max_zero_request / a * a;
        while (len > 0) {
            const std::uint64_t n = std::min(len, step);
            wire::request r{.flags = flags, .type = type, .cookie = 0, .offset = off, .length = std::uint32_t(n)};
            auto o = co_await client_->submit(r);
            if (o.err)
                co_return errno_error(o.err);
            off += n;
            len -= n;
        }
        co_return result<void>{};
    }

    nbd_open_options opts_;
    std::shared_ptr<client> client_;
};

} // namespace

asio::awaitable<qapi::result<std::shared_ptr<node>>> open_nbd(node_options common, nbd_open_options opts)
{
    auto ex = co_await asio::this_coro::executor;
    const std::string log_name = "node '" + common.name + "'";
    // open-timeout: keep trying to connect until it runs out (QEMU 7.0's open-timeout).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opts.open_timeout);
    attempt a;
    for (auto backoff = 50ms;; backoff = std::min<std::chrono::milliseconds>(backoff * 2, 1000ms)) {
        a = co_await connect_once(ex, opts, log_name);
        if (a.s || !a.connect_failed || std::chrono::steady_clock::now() + backoff >= deadline)
            break;
        asio::steady_timer t(ex, backoff);
        co_await t.async_wait(nothrow_awaitable);
    }
    if (!a.s)
        co_return qapi::generic(a.error);
    const auto& info = a.s->info();
    if (info.has(wire::tflag_read_only) && !common.read_only) {
        if (!common.auto_read_only) {
            a.s->close();
            co_return qapi::generic("Could not open image: Permission denied");   // QEMU 7.2's words
        }
        common.read_only = true;
    }
    auto c = std::make_shared<client>(ex, opts, common.name);
    c->adopt(std::move(a.s), !common.read_only);
    log::get("block")->info("node '{}': connected to {} (export '{}', {} bytes{}{}{})", common.name,
                            opts.server.describe(), opts.export_name, info.size,
                            info.structured ? ", structured replies" : "",
                            info.allocation ? ", base:allocation" : "", opts.tls_creds ? ", TLS" : "");
    co_return std::shared_ptr<node>(std::make_shared<nbd_node>(std::move(common), std::move(opts), std::move(c)));
}

} // namespace bjd::block
