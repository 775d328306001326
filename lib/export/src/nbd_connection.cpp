// SPDX-License-Identifier: MIT
// NBD transmission phase: request decoding, per-request coroutines, the reply writer.
#include "nbd_connection.hpp"

#include "bjd/log.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <cstring>

#include <poll.h>
#include <unistd.h>

namespace bjd::exports::detail {

using namespace nbd;

namespace {

/// Most extents one BLOCK_STATUS reply describes (the spec lets us stop early).
constexpr unsigned max_extents = 1024;
/// Most replies gathered into one socket write. Few: the client answers each reply with a
/// new request, so replies sent a few at a time let it work on the first ones while the loop
/// sends the rest, and its next requests reach the disk sooner. One loop turn often
/// completes 20-30 reads of a client at queue depth 32; sent in one write, they came back as
/// one burst and the disk's queue ran dry in between. With 4 per write, 4k random reads at
/// qd32 ran 1.08x as fast as with 64 (interleaved runs, bench/NOTES-nbd.md); 8 and more
/// lost that, 1 and 2 cost more CPU for the same rate.
constexpr std::size_t max_batch = 4;
/// The transmission phase reads the socket in batches of up to this much: one recv brings
/// every request the client has queued, and the requests it held start together, so that
/// their I/O reaches the kernel in one io_uring submission. WRITE payloads up to a quarter of
/// it come through it too; larger ones are read straight into their buffers.
constexpr std::size_t input_bytes = 64u << 10;

/// The socket, moved onto `ctx` (the connection's loop) if it was accepted elsewhere.
connection::socket_type on_loop(connection::socket_type sock, asio::io_context& ctx)
{
    if (&sock.get_executor().context() == &ctx)
        return sock;
    boost::system::error_code ec;
    auto ep = sock.local_endpoint(ec);
    if (ec)
        return sock;   // already broken: the handshake ends it at once, wherever it lives
    int fd = sock.release(ec);
    connection::socket_type moved(ctx);
    if (!ec)
        moved.assign(ep.protocol(), fd, ec);
    if (ec)
        ::close(fd);   // moved stays closed: the handshake fails at its first read
    return moved;
}

std::string describe_peer(const connection::socket_type& s)
{
    boost::system::error_code ec;
    auto ep = s.remote_endpoint(ec);
    if (ec)
        return "client";
    if (ep.protocol().family() == AF_UNIX)
        return "unix client";
    if (ep.protocol().family() == AF_INET || ep.protocol().family() == AF_INET6) {
        char host[64] = {};
        auto* sa = reinterpret_cast<const sockaddr*>(ep.data());
        if (sa->sa_family == AF_INET) {
            auto* in = reinterpret_cast<const sockaddr_in*>(sa);
            ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
            return fmt::format("{}:{}", host, ntohs(in->sin_port));
        }
        auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        return fmt::format("[{}]:{}", host, ntohs(in6->sin6_port));
    }
    return "client";
}

} // namespace

connection::connection(manager& m, socket_type sock, std::shared_ptr<connection_tracker> tracker)
    : mgr_(m)
    , tracker_(std::move(tracker))
    , loop_(tracker_->loops.pick())
    , socket_(on_loop(std::move(sock), loop_.ctx))
    , fd_(socket_.native_handle())
    , changed_(loop_.ctx.get_executor())
    , handshake_timer_(mgr_.loop())
{
    peer_ = describe_peer(socket_);
    ++tracker_->live;
    ++loop_.connections;
}

connection::~connection() = default;

void connection::start(std::shared_ptr<connection> c)
{
    auto& all = c->tracker_->all;
    std::erase_if(all, [](auto& w) { return w.expired(); });
    all.push_back(c);
    auto& main = c->mgr_.loop();
    asio::co_spawn(main, run(std::move(c)), log::on_failure("nbd", "nbd connection"));
}

void connection::close()
{
    if (!transmitting_ || loop_.main) {
        close_here();
        return;
    }
    closing_ = true;   // hung_up() says so at once
    // The worker closes only while its transmission phase runs; once that ended, run() on the
    // main loop owns the socket again (and closes it). The reference goes back to the main
    // loop, so that the connection is never destroyed on a worker.
    asio::post(loop_.ctx, [self = shared_from_this()]() mutable {
        if (self->on_loop_)
            self->close_here();
        auto& main = self->mgr_.loop();
        asio::post(main, [s = std::move(self)] {});
    });
}

void connection::close_here()
{
    closing_ = true;
    if (shut_)
        return;
    shut_ = true;
    boost::system::error_code ec;
    // Wakes the read loop (EOF) and fails pending writes; the socket itself is closed once
    // the in-flight requests are done.
    socket_.shutdown(asio::socket_base::shutdown_both, ec);
    if (loop_.main || !on_loop_)   // on the main loop: the handshake timer is its
        handshake_timer_.cancel();
    notify();
}

bool connection::hung_up() const
{
    // Only asked while the connection is attached, so fd_ is still its socket's.
    if (closing_)
        return true;
    // The client may have sent NBD_CMD_DISC and closed its end a moment ago while the read
    // loop has not run yet (qemu-img exits, the orchestrator deletes the export at once).
    pollfd p{fd_, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

asio::awaitable<void> connection::run(std::shared_ptr<connection> self)
{
    co_await self->run_phases();
    if (self->tls_)
        self->tls_->bye();
    boost::system::error_code ec;
    self->socket_.shutdown(asio::socket_base::shutdown_both, ec);
    self->socket_.close(ec);
    if (self->exp_)
        self->exp_->detach(self.get());   // may finish an export deletion
    log::get("nbd")->debug("nbd {}: disconnected", self->peer_);
    auto tracker = self->tracker_;
    --tracker->live;
    --self->loop_.connections;
    self.reset();   // usually the last reference: gone before an accept loop recounts
    tracker->changed.cancel();
}

asio::awaitable<void> connection::run_phases()
{
    std::weak_ptr<connection> weak = weak_from_this();
    handshake_timer_.expires_after(handshake_timeout);
    handshake_timer_.async_wait([weak](boost::system::error_code ec) {
        auto self = weak.lock();
        if (!ec && self && !self->handshake_done_) {
            log::get("nbd")->info("nbd {}: handshake timed out", self->peer_);
            self->close();
        }
    });
    bool go = co_await handshake();
    handshake_done_ = true;
    handshake_timer_.cancel();
    if (!go || closing_ || !exp_)
        co_return;
    if (exp_->shutting_down()) {
        exp_.reset();
        co_return;
    }
    exp_->attach(this);
    log::get("nbd")->debug("nbd {}: export '{}' opened (event loop {})", peer_, exp_->name(), loop_.index);
    transmitting_ = true;
    if (loop_.main)
        co_await transmission();
    else
        co_await asio::co_spawn(loop_.ctx, transmission(), asio::use_awaitable);
    transmitting_ = false;
}

asio::awaitable<boost::system::error_code> connection::fill(std::size_t need)
{
    if (buffered_input() >= need)
        co_return boost::system::error_code{};
    if (in_beg_ + need > in_.size()) {
        std::memmove(in_.data(), in_.data() + in_beg_, in_end_ - in_beg_);
        in_end_ -= in_beg_;
        in_beg_ = 0;
    }
    while (in_end_ - in_beg_ < need) {
        auto room = asio::buffer(in_.data() + in_end_, in_.size() - in_end_);
        boost::system::error_code ec;
        std::size_t n = 0;
        if (tls_)
            std::tie(ec, n) = co_await tls_->read_some(room);
        else
            std::tie(ec, n) = co_await socket_.async_read_some(room, nothrow_awaitable);
        if (ec)
            co_return ec;
        in_end_ += n;
    }
    co_return boost::system::error_code{};
}

asio::awaitable<boost::system::error_code> connection::read_payload(std::byte* dst, std::size_t n)
{
    if (n <= input_bytes / 4 && buffered_input() < n) {
        if (auto ec = co_await fill(n); ec)
            co_return ec;
    }
    const std::size_t have = std::min(n, buffered_input());
    std::memcpy(dst, in_.data() + in_beg_, have);
    in_beg_ += have;
    if (have < n)
        co_return co_await read_exact(asio::buffer(dst + have, n - have));
    co_return boost::system::error_code{};
}

asio::awaitable<bool> connection::discard_payload(std::uint32_t length)
{
    const std::size_t buffered = std::min<std::size_t>(length, in_end_ - in_beg_);
    in_beg_ += buffered;
    length -= std::uint32_t(buffered);
    std::vector<std::byte> sink(std::min<std::uint32_t>(length, 1u << 20));
    while (length > 0) {
        std::size_t n = std::min<std::size_t>(length, sink.size());
        auto ec = co_await read_exact(asio::buffer(sink.data(), n));
        if (ec)
            co_return false;
        length -= std::uint32_t(n);
    }
    co_return true;
}

asio::awaitable<void> connection::transmission()
{
    auto self = shared_from_this();
    on_loop_ = true;
    asio::co_spawn(socket_.get_executor(), write_loop(self), log::on_failure("nbd", "nbd writer"));

    const auto& lim = mgr_.limits();
    in_.resize(input_bytes);
    for (;;) {
        if (buffered_input() < request_size) {
            if (auto ec = co_await fill(request_size); ec)
                break;   // EOF or reset: the client went away; in-flight requests still finish
        }
        if (closing_)
            break;
        request req;
        std::span<const std::byte, request_size> hdr(in_.data() + in_beg_, request_size);
        in_beg_ += request_size;
        if (!decode_request(hdr, req)) {
            log::get("nbd")->info("nbd {}: bad request magic, disconnecting", peer_);
            break;
        }
        if (req.type == cmd_disc)
            break;

        std::size_t charge = 0;
        if (req.type == cmd_write || req.type == cmd_read)
            charge = req.length <= max_payload ? req.length : 0;
        while (!closing_ && (in_flight_ >= lim.max_in_flight ||
                             (in_flight_ > 0 && buffered_ + charge > lim.max_buffered_bytes)))
            co_await wait_changed();
        if (closing_)
            break;

        io::aligned_buffer payload;
        if (req.type == cmd_write) {
            if (req.length > max_payload) {
                // Too big to buffer: skip the data so the stream stays in sync, then refuse.
                if (!co_await discard_payload(req.length))
                    break;
                ++in_flight_;
                enqueue(error_reply(req, err_inval, "request too large"));
                continue;
            }
            payload = loop_.buffers.get(req.length);
            if (auto ec = co_await read_payload(payload.data(), req.length); ec) {
                log::get("nbd")->info("nbd {}: client vanished in the middle of a WRITE payload", peer_);
                break;
            }
        }
        ++in_flight_;
        buffered_ += charge;
        asio::co_spawn(socket_.get_executor(), process(self, req, std::move(payload), charge),
                       log::on_failure("nbd", "nbd request"));
    }

    reading_done_ = true;
    while (in_flight_ > 0 || !writer_done_) {
        notify();
        co_await wait_changed();
    }
    on_loop_ = false;
}

asio::awaitable<void> connection::process(std::shared_ptr<connection> self, request req,
                                          io::aligned_buffer payload, std::size_t charge)
{
    // Every request is answered, whatever happens: the reply is what releases its in-flight
    // slot, and a connection with a slot that never comes back would never finish closing.
    reply r;
    io::aligned_buffer buf;   // taken here: the pool is this loop's
    executing_request counted(self->loop_);   // until the reply is queued, below
    if (req.type == cmd_read && req.length <= max_payload)
        buf = self->loop_.buffers.get(req.length);
    try {
        if (self->loop_.main)
            r = co_await self->execute(req, payload, buf);
        else
            r = co_await asio::co_spawn(self->mgr_.loop(), self->execute(req, payload, buf), asio::use_awaitable);
    } catch (const std::bad_alloc&) {
        r = self->error_reply(req, err_nomem, "out of memory");
    } catch (const std::exception& e) {
        log::get("nbd")->error("nbd {}: request failed: {}", self->peer_, e.what());
        r = self->error_reply(req, err_io, "internal error");
    }
    self->loop_.buffers.put(std::move(payload));
    self->loop_.buffers.put(std::move(buf));   // unless the reply took it
    r.charge = charge;
    self->enqueue(std::move(r));
}

connection::reply connection::ok_reply(const request& req) const
{
    reply r;
    encode_simple_reply(r.head, 0, req.cookie);
    return r;
}

connection::reply connection::error_reply(const request& req, std::uint32_t error, std::string_view message) const
{
    reply r;
    if (structured_) {
        std::string_view msg = message.substr(0, 1024);
        encode_chunk_header(r.head, chunk_flag_done, chunk_error, req.cookie, std::uint32_t(6 + msg.size()));
        writer(r.head).u32(error).u16(std::uint16_t(msg.size())).bytes(msg);
    } else {
        encode_simple_reply(r.head, error, req.cookie);
    }
    return r;
}

asio::awaitable<connection::reply> connection::execute(const request& req, io::aligned_buffer& payload,
                                                       io::aligned_buffer& buf)
{
    auto fail = [&](std::uint32_t err, std::string_view msg) { return error_reply(req, err, msg); };
    auto fail_ec = [&](const std::error_code& ec) {
        return error_reply(req, to_wire_error(ec.value()), strerror_text(ec));
    };

    std::uint16_t allowed = cmd_flag_fua;
    switch (req.type) {
    case cmd_read: allowed |= structured_ ? cmd_flag_df : 0; break;
    case cmd_write_zeroes: allowed |= cmd_flag_no_hole | cmd_flag_fast_zero; break;
    case cmd_block_status: allowed |= cmd_flag_req_one; break;
    case cmd_write: case cmd_flush: case cmd_trim: case cmd_cache: break;
    default: co_return fail(err_inval, "unsupported command");
    }
    if (req.flags & ~allowed)
        co_return fail(err_inval, "unsupported flags for this command");

    // A transaction in progress holds the request here, before it picks its node, so that it
    // goes through the filters and overlays the transaction puts in.
    auto pass = exp_->try_enter_gate();
    if (!pass)
        pass.emplace(co_await exp_->enter_gate());
    auto node = exp_->node_shared();
    if (!node)
        co_return fail(err_shutdown, "export is shutting down");
    const bool is_write = req.type == cmd_write || req.type == cmd_write_zeroes || req.type == cmd_trim;
    // Requests refused before they reach the node are QEMU's "invalid" operations: the
    // device model (here, the export) rejects them, and the node's statistics count them.
    auto invalid = [&](std::uint32_t err, std::string_view msg) {
        if (req.type != cmd_block_status && req.type != cmd_cache)
            node->acct().invalid(req.type == cmd_read    ? stats::op::read
                                 : req.type == cmd_flush ? stats::op::flush
                                 : req.type == cmd_trim  ? stats::op::unmap
                                                         : stats::op::write);
        return fail(err, msg);
    };
    if (is_write && !exp_->writable())
        co_return invalid(err_perm, "export is read-only");
    if ((req.type == cmd_read || req.type == cmd_write || req.type == cmd_cache) && req.length > max_payload)
        co_return invalid(err_inval, "request too large");
    if (req.type != cmd_flush) {
        std::uint64_t size = node->size();
        if (req.offset > size || req.length > size - req.offset)
            co_return invalid(req.type == cmd_write || req.type == cmd_write_zeroes ? err_nospc : err_inval,
                              "request beyond the end of the export");
    }
    const bool fua = (req.flags & cmd_flag_fua) || exp_->options().writethrough;

    switch (req.type) {
    case cmd_read: {
        // QEMU flushes before a READ with FUA (the protocol only defines FUA for writes).
        if (req.flags & cmd_flag_fua) {
            auto fr = co_await node->flush();
            if (!fr)
                co_return fail_ec(fr.error());
        }
        // Without DF, a structured READ skips zero ranges as OFFSET_HOLE chunks, like QEMU.
        if (structured_ && !(req.flags & cmd_flag_df) && req.length > 0)
            co_return co_await sparse_read(req, *node, buf);
        if (req.length > 0) {
            auto rr = co_await node->read(req.offset, buf.span());
            if (!rr)
                co_return fail_ec(rr.error());
        }
        reply r;
        if (structured_) {
            if (req.length == 0) {
                encode_chunk_header(r.head, chunk_flag_done, chunk_none, req.cookie, 0);
                co_return r;
            }
            encode_chunk_header(r.head, chunk_flag_done, chunk_offset_data, req.cookie, req.length + 8);
            writer(r.head).u64(req.offset);
        } else {
            encode_simple_reply(r.head, 0, req.cookie);
        }
        r.data = std::move(buf);
        r.data_len = req.length;
        co_return r;
    }
    case cmd_write: {
        auto rr = co_await node->write(req.offset, {payload.data(), req.length}, fua);
        co_return rr ? ok_reply(req) : fail_ec(rr.error());
    }
    case cmd_flush: {
        auto rr = co_await node->flush();
        co_return rr ? ok_reply(req) : fail_ec(rr.error());
    }
    case cmd_trim: {
        if (req.length > 0) {
            auto rr = co_await node->discard(req.offset, req.length);
            if (!rr && rr.error() != errno_error(ENOTSUP) && rr.error() != errno_error(EOPNOTSUPP))
                co_return fail_ec(rr.error());
            if (fua) {
                auto fr = co_await node->flush();
                if (!fr)
                    co_return fail_ec(fr.error());
            }
        }
        co_return ok_reply(req);
    }
    case cmd_write_zeroes: {
        if (req.length > 0) {
            block::zero_flags zf;
            zf.may_unmap = !(req.flags & cmd_flag_no_hole);
            zf.no_fallback = req.flags & cmd_flag_fast_zero;
            auto rr = co_await node->write_zeroes(req.offset, req.length, zf);
            if (!rr)
                co_return fail_ec(rr.error());
            if (fua) {
                auto fr = co_await node->flush();
                if (!fr)
                    co_return fail_ec(fr.error());
            }
        }
        co_return ok_reply(req);
    }
    case cmd_block_status:
        co_return co_await block_status(req, *node);
    case cmd_cache:
        // QEMU's CACHE is a copy-on-read prefetch, which does nothing where the top layer
        // holds the data (raw and file nodes); blockjobd has no copy-on-read, so CACHE is
        // validated above and then succeeds without I/O on every node.
        co_return ok_reply(req);
    }
    co_return fail(err_inval, "unsupported command");
}

asio::awaitable<connection::reply> connection::sparse_read(const request& req, block::node& n,
                                                           io::aligned_buffer& buf)
{
    // One chunk per extent the node reports: OFFSET_HOLE where it reads as zeroes (nothing is
    // read there), OFFSET_DATA elsewhere; the last chunk carries DONE.
    reply r;
    r.data = std::move(buf);
    r.head.reserve(chunk_header_size + 12);   // room for the usual one chunk, data or hole
    std::size_t pos = 0;
    auto error_chunk = [&](std::uint32_t err, std::string_view msg) {
        // QEMU drops the connection when a read fails after the first chunk; an ERROR chunk
        // ends the reply just as well and keeps the connection.
        encode_chunk_header(r.head, chunk_flag_done, chunk_error, req.cookie, std::uint32_t(6 + msg.size()));
        writer(r.head).u32(err).u16(std::uint16_t(msg.size())).bytes(msg);
        r.pieces.push_back({r.head.size(), 0, 0});
    };
    while (pos < req.length) {
        const std::uint64_t off = req.offset + pos;
        const std::size_t left = req.length - pos;
        // A node that cannot say (an error, as from a drive without a medium, or an empty
        // extent): read the rest, so that the read reports (and counts) the real failure.
        auto now = n.block_status_now(off, left);
        auto st = now ? std::move(*now) : co_await n.block_status(off, left);
        std::size_t len = st ? std::size_t(std::min<std::uint64_t>(st->length, left)) : 0;
        const bool zero = len > 0 && (st->flags & block::status_zero);
        if (len == 0)
            len = left;
        const std::uint16_t done = pos + len == req.length ? chunk_flag_done : 0;
        if (zero) {
            encode_chunk_header(r.head, done, chunk_offset_hole, req.cookie, 12);
            writer(r.head).u64(off).u32(std::uint32_t(len));
            r.pieces.push_back({r.head.size(), 0, 0});
        } else {
            auto rr = co_await n.read(off, {r.data.data() + pos, len});
            if (!rr) {
                error_chunk(to_wire_error(rr.error().value()), strerror_text(rr.error()));
                co_return r;
            }
            encode_chunk_header(r.head, done, chunk_offset_data, req.cookie, std::uint32_t(len + 8));
            writer(r.head).u64(off);
            r.pieces.push_back({r.head.size(), pos, len});
        }
        pos += len;
    }
    co_return r;
}

asio::awaitable<connection::reply> connection::block_status(const nbd::request& req, block::node& n)
{
    if (!structured_ || (!meta_allocation_ && meta_bitmaps_.empty()))
        co_return error_reply(req, err_inval, "no metadata context was negotiated");
    if (req.length == 0)
        co_return error_reply(req, err_inval, "BLOCK_STATUS of an empty range");

    // One chunk per selected context, base:allocation first, then the bitmaps in the
    // export's order; the last one carries the DONE flag (QEMU's order).
    const auto& bitmaps = exp_->bitmaps();
    std::vector<std::size_t> served;
    for (std::size_t i : meta_bitmaps_)
        if (i < bitmaps.size())
            served.push_back(i);
    reply r;
    const bool one = req.flags & cmd_flag_req_one;
    if (meta_allocation_) {
        std::vector<std::pair<std::uint32_t, std::uint32_t>> extents;   // (length, flags)
        std::uint64_t pos = req.offset;
        const std::uint64_t end = req.offset + req.length;
        while (pos < end && extents.size() < (one ? 1u : max_extents)) {
            auto st = co_await n.block_status(pos, end - pos);
            if (!st)
                co_return error_reply(req, to_wire_error(st.error().value()), strerror_text(st.error()));
            std::uint64_t len = std::min<std::uint64_t>(st->length, end - pos);
            if (len == 0)
                break;
            std::uint32_t flags = ((st->flags & block::status_data) ? 0 : state_hole) |
                                  ((st->flags & block::status_zero) ? state_zero : 0);
            if (!extents.empty() && extents.back().second == flags && !one)
                extents.back().first += std::uint32_t(len);
            else
                extents.emplace_back(std::uint32_t(len), flags);
            pos += len;
        }
        encode_chunk_header(r.head, served.empty() ? chunk_flag_done : 0, chunk_block_status, req.cookie,
                            std::uint32_t(4 + 8 * extents.size()));
        writer w(r.head);
        w.u32(base_allocation_id);
        for (auto& [len, flags] : extents)
            w.u32(len).u32(flags);
    }
    for (std::size_t k = 0; k < served.size(); ++k)
        bitmap_status(req, bitmaps[served[k]]->bits(), first_bitmap_id + std::uint32_t(served[k]),
                      k + 1 == served.size(), r);
    co_return r;
}

void connection::bitmap_status(const nbd::request& req, const block::dirty_bitmap& b, std::uint32_t id, bool last,
                               reply& r) const
{
    // QEMU's bitmap_to_extents: alternating clean and dirty runs, adjacent runs of one kind
    // merged, at most one extent with REQ_ONE; the range is read as the bitmap was when the
    // request ran. Extents stop at the bitmap's end (its node's size).
    const std::size_t cap = (req.flags & cmd_flag_req_one) ? 1u : max_extents;
    std::vector<std::pair<std::uint32_t, std::uint32_t>> extents;   // (length, flags)
    auto add = [&](std::uint64_t len, std::uint32_t flags) {
        if (len == 0)
            return true;
        if (!extents.empty() && extents.back().second == flags) {
            extents.back().first += std::uint32_t(len);   // within one request: fits in 32 bits
            return true;
        }
        if (extents.size() >= cap)
            return false;
        extents.emplace_back(std::uint32_t(len), flags);
        return true;
    };
    const std::uint64_t end = req.offset + req.length;
    std::uint64_t pos = req.offset;
    bool full = false;
    while (auto a = b.next_dirty_area(pos, end)) {
        if (!add(a->offset - pos, 0) || !add(a->length, state_dirty)) {
            full = true;
            break;
        }
        pos = a->offset + a->length;
    }
    if (!full)
        add(end - pos, 0);
    encode_chunk_header(r.head, last ? chunk_flag_done : 0, chunk_block_status, req.cookie,
                        std::uint32_t(4 + 8 * extents.size()));
    writer w(r.head);
    w.u32(id);
    for (auto& [len, flags] : extents)
        w.u32(len).u32(flags);
}

void connection::enqueue(reply r)
{
    queue_.push_back(std::move(r));
    notify();
}

asio::awaitable<void> connection::write_loop(std::shared_ptr<connection> self)
{
    std::vector<reply> batch;
    std::vector<asio::const_buffer> bufs;
    for (;;) {
        while (self->queue_.empty() && !(self->reading_done_ && self->in_flight_ == 0))
            co_await self->wait_changed();
        if (self->queue_.empty())
            break;
        batch.clear();
        bufs.clear();
        while (!self->queue_.empty() && batch.size() < max_batch) {
            batch.push_back(std::move(self->queue_.front()));
            self->queue_.pop_front();
            auto& r = batch.back();
            if (r.pieces.empty()) {
                bufs.push_back(asio::buffer(r.head));
                if (r.data_len)
                    bufs.push_back(asio::buffer(r.data.data(), r.data_len));
            } else {
                std::size_t h = 0;
                for (auto& p : r.pieces) {
                    bufs.push_back(asio::buffer(r.head.data() + h, p.head_end - h));
                    h = p.head_end;
                    if (p.data_len)
                        bufs.push_back(asio::buffer(r.data.data() + p.data_off, p.data_len));
                }
            }
        }
        if (!self->closing_) {
            boost::system::error_code ec;
            if (self->tls_)
                ec = co_await self->tls_->write(bufs);
            else
                ec = std::get<0>(co_await asio::async_write(self->socket_, bufs, nothrow_awaitable));
            if (ec) {
                // The client is gone: keep completing requests (their writes still reach the
                // node), but stop reading and drop the replies.
                log::get("nbd")->debug("nbd {}: reply not sent: {}", self->peer_, ec.message());
                self->close_here();
            }
        }
        self->loop_.replies += batch.size();
        for (auto& r : batch) {
            --self->in_flight_;
            self->buffered_ -= r.charge;
            self->loop_.buffers.put(std::move(r.data));
        }
        batch.clear();
        self->notify();
    }
    self->writer_done_ = true;
    self->notify();
}

} // namespace bjd::exports::detail
