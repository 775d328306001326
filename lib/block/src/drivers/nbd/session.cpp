// SPDX-License-Identifier: MIT
// NBD client transmission phase: one writer, one reader, requests matched by cookie.
#include "session.hpp"

#include "bjd/log.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstring>

namespace bjd::block::nbd_client {

using namespace bjd::nbd;

namespace {
/// Most requests gathered into one write.
constexpr std::size_t max_batch = 64;
/// Largest non-data chunk payload we accept (error messages, extent lists).
constexpr std::uint32_t max_meta_chunk = 1u << 20;
} // namespace

session::session(asio::any_io_executor ex, std::unique_ptr<stream> s, export_info info, std::string log_name)
    : ex_(ex), stream_(std::move(s)), info_(info), log_name_(std::move(log_name)),
      writer_wake_(ex, asio::steady_timer::time_point::max())
{
}

session::~session() = default;

void session::start(std::function<void(session*)> on_lost)
{
    on_lost_ = std::move(on_lost);
    asio::co_spawn(ex_, reader(shared_from_this()), log::on_failure("block", "nbd client reader"));
    asio::co_spawn(ex_, writer(shared_from_this()), log::on_failure("block", "nbd client writer"));
}

asio::awaitable<outcome> session::request(nbd::request hdr, std::span<const std::byte> payload,
                                          std::span<std::byte> into, extent* status)
{
    if (!alive_)
        co_return outcome{0, true};
    auto self = shared_from_this();   // the reply may come after the node let go of us
    asio::steady_timer wake(ex_, asio::steady_timer::time_point::max());
    pending p;
    hdr.cookie = next_cookie_++;
    p.hdr = hdr;
    p.into = into;
    p.status = status;
    p.wake = &wake;
    pending_.emplace(hdr.cookie, &p);
    outgoing o;
    std::vector<std::byte> h;
    encode_request(h, hdr);
    std::memcpy(o.head.data(), h.data(), request_size);
    o.payload = payload;
    queue_.push_back(o);
    writer_wake_.cancel();
    while (!p.done)
        co_await wake.async_wait(nothrow_awaitable);
    co_return p.out;
}

void session::finish(pending& p)
{
    pending_.erase(p.hdr.cookie);
    p.done = true;
    p.wake->cancel();
}

void session::broken(const char* why)
{
    if (!alive_)
        return;
    alive_ = false;
    if (!closed_)
        log::get("block")->warn("{}: connection to the NBD server lost: {}", log_name_, why);
    stream_->close();
    writer_wake_.cancel();
    // Every request still waiting may be sent again on a new connection: none of them got
    // its whole reply, so nothing was acknowledged.
    auto waiting = std::move(pending_);
    pending_.clear();
    for (auto& [cookie, p] : waiting) {
        p->out = outcome{0, true};
        p->done = true;
        p->wake->cancel();
    }
    queue_.clear();
    if (!closed_ && on_lost_) {
        auto cb = std::move(on_lost_);
        cb(this);
    }
}

void session::close()
{
    if (closed_)
        return;
    closed_ = true;
    if (alive_ && !writing_ && queue_.empty()) {
        nbd::request disc{.flags = 0, .type = cmd_disc, .cookie = next_cookie_++, .offset = 0, .length = 0};
        std::vector<std::byte> h;
        encode_request(h, disc);
        (void)stream_->write_now(h);
    }
    broken("closed");
}

asio::awaitable<void> session::writer(std::shared_ptr<session> self)
{
    std::vector<asio::const_buffer> bufs;
    std::vector<outgoing> batch;
    while (self->alive_) {
        if (self->queue_.empty()) {
            co_await self->writer_wake_.async_wait(nothrow_awaitable);
            continue;
        }
        batch.clear();
        bufs.clear();
        while (!self->queue_.empty() && batch.size() < max_batch) {
            batch.push_back(self->queue_.front());
            self->queue_.pop_front();
        }
        for (auto& o : batch) {
            bufs.emplace_back(o.head.data(), o.head.size());
            if (!o.payload.empty())
                bufs.emplace_back(o.payload.data(), o.payload.size());
        }
        self->writing_ = true;
        auto ec = co_await self->stream_->write(bufs);
        self->writing_ = false;
        if (ec) {
            self->broken(ec.message().c_str());
            co_return;
        }
    }
}

asio::awaitable<bool> session::skip(std::uint32_t length)
{
    std::vector<std::byte> sink(std::min<std::uint32_t>(length, 64u << 10));
    while (length > 0) {
        std::uint32_t n = std::min<std::uint32_t>(length, std::uint32_t(sink.size()));
        if (co_await stream_->read(asio::buffer(sink.data(), n)))
            co_return false;
        length -= n;
    }
    co_return true;
}

asio::awaitable<bool> session::chunk(pending& p, std::uint16_t type, std::uint32_t length)
{
    const auto& rq = p.hdr;
    auto in_range = [&](std::uint64_t off, std::uint64_t len) {
        return off >= rq.offset && len <= rq.length && off - rq.offset <= rq.length - len;
    };
    switch (type) {
    case chunk_none:
        co_return length == 0;
    case chunk_offset_data: {
        if (rq.type != cmd_read || length <= 8)
            co_return false;
        std::array<std::byte, 8> o;
        if (co_await stream_->read(asio::buffer(o)))
            co_return false;
        const std::uint64_t off = load_be64(o.data());
        const std::uint32_t len = length - 8;
        if (!in_range(off, len))
            co_return false;
        co_return !co_await stream_->read(asio::buffer(p.into.data() + (off - rq.offset), len));
    }
    case chunk_offset_hole: {
        if (rq.type != cmd_read || length != 12)
            co_return false;
        std::array<std::byte, 12> o;
        if (co_await stream_->read(asio::buffer(o)))
            co_return false;
        const std::uint64_t off = load_be64(o.data());
        const std::uint32_t len = load_be32(o.data() + 8);
        if (len == 0 || !in_range(off, len))
            co_return false;
        std::memset(p.into.data() + (off - rq.offset), 0, len);
        co_return true;
    }
    case chunk_block_status: {
        if (rq.type != cmd_block_status || length < 12 || (length - 4) % 8 != 0 || length > max_meta_chunk)
            co_return false;
        std::vector<std::byte> d(length);
        if (co_await stream_->read(asio::buffer(d)))
            co_return false;
        if (load_be32(d.data()) != info_.allocation_id || p.status_seen)
            co_return false;
        const std::uint32_t len = load_be32(d.data() + 4);
        std::uint32_t flags = load_be32(d.data() + 8);
        if (info_.allocation_depth && flags > 2)
            flags = 2;
        if (len == 0)
            co_return false;
        p.status_seen = true;
        if (p.status) {
            // base:allocation: a hole reads as zeroes from nothing stored; data is this
            // export's own (QEMU's nbd_client_co_block_status). An x-dirty-bitmap context's
            // flags are read the same way.
            unsigned f = (flags & state_hole) ? 0u : (status_data | status_allocated);
            if (flags & state_zero)
                f |= status_zero;
            *p.status = extent{f, std::min<std::uint64_t>(len, rq.length)};
        }
        co_return true;
    }
    default:
        break;
    }
    if (type == chunk_error || type == chunk_error_offset || (type & 0x8000)) {
        if (length < 6 || length > max_meta_chunk)
            co_return false;
        std::vector<std::byte> d(length);
        if (co_await stream_->read(asio::buffer(d)))
            co_return false;
        const std::uint32_t err = load_be32(d.data());
        const std::uint16_t mlen = load_be16(d.data() + 4);
        if (std::size_t(mlen) + 6 > length)
            co_return false;
        if (p.out.err == 0)
            p.out.err = from_wire_error(err);
        if (mlen)
            log::get("block")->debug("{}: server error for {}: {}", log_name_, cmd_name(rq.type),
                                     std::string(reinterpret_cast<const char*>(d.data() + 6), mlen));
        co_return true;
    }
    // An unknown chunk type that is not an error: skip it, the request fails.
    if (!co_await skip(length))
        co_return false;
    if (p.out.err == 0)
        p.out.err = EIO;
    co_return true;
}

asio::awaitable<void> session::reader(std::shared_ptr<session> self)
{
    auto& s = *self;
    while (s.alive_) {
        std::array<std::byte, chunk_header_size> h;
        if (auto ec = co_await s.stream_->read(asio::buffer(h.data(), simple_reply_size))) {
            s.broken(ec == asio::error::eof ? "the server closed the connection" : ec.message().c_str());
            co_return;
        }
        reply_header rh;
        if (!decode_reply_start(std::span<const std::byte, simple_reply_size>(h.data(), simple_reply_size), rh)) {
            s.broken("bad reply magic");
            co_return;
        }
        if (rh.structured) {
            if (auto ec = co_await s.stream_->read(asio::buffer(h.data() + simple_reply_size, 4))) {
                s.broken(ec.message().c_str());
                co_return;
            }
            rh.length = load_be32(h.data() + simple_reply_size);
        }
        auto it = s.pending_.find(rh.cookie);
        if (it == s.pending_.end() || (rh.structured && !s.info_.structured)) {
            s.broken("reply to an unknown request");
            co_return;
        }
        pending& p = *it->second;
        if (!rh.structured) {
            if (rh.error) {
                p.out.err = from_wire_error(rh.error);
            } else if (p.hdr.type == cmd_read && p.hdr.length) {
                if (auto ec = co_await s.stream_->read(asio::buffer(p.into.data(), p.into.size()))) {
                    s.broken(ec.message().c_str());
                    co_return;
                }
            }
            s.finish(p);
            continue;
        }
        if (!co_await s.chunk(p, rh.type, rh.length)) {
            s.broken("malformed reply chunk");
            co_return;
        }
        if (rh.flags & chunk_flag_done) {
            if (p.hdr.type == cmd_block_status && p.out.err == 0 && !p.status_seen)
                p.out.err = EIO;   // the server owes us an extent
            s.finish(p);
        }
    }
}

} // namespace bjd::block::nbd_client
