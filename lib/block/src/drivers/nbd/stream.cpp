// SPDX-License-Identifier: MIT
// The NBD client streams: a connected UNIX or TCP socket, and TLS over it.
#include "stream.hpp"

#include "bjd/crypto/tls_session.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <memory>

namespace bjd::block::nbd_client {
namespace {

/// The socket, read in batches: a reply is a 16- or 20-byte header and often a small
/// payload, and with many requests in flight one recv takes all the replies that have come
/// (as the export reads its requests: docs/nbd-threads.md). Payloads of `direct_min` bytes
/// or more go straight from the socket into the caller's buffer.
class plain_stream final : public stream {
public:
    explicit plain_stream(asio::generic::stream_protocol::socket s)
        : sock_(std::move(s)), in_(std::make_unique<std::byte[]>(batch_size))
    {
    }

    asio::awaitable<error_code> read(asio::mutable_buffer buf) override
    {
        auto* out = static_cast<std::byte*>(buf.data());
        std::size_t want = buf.size();
        const std::size_t held = std::min(want, in_end_ - in_pos_);
        std::memcpy(out, in_.get() + in_pos_, held);
        in_pos_ += held;
        out += held;
        want -= held;
        if (want == 0)
            co_return error_code{};
        in_pos_ = in_end_ = 0;
        if (want >= direct_min) {
            auto [ec, n] = co_await asio::async_read(sock_, asio::buffer(out, want), nothrow_awaitable);
            co_return ec;
        }
        auto [ec, n] = co_await asio::async_read(sock_, asio::buffer(in_.get(), batch_size),
                                                 asio::transfer_at_least(want), nothrow_awaitable);
        if (n < want)
            co_return ec ? ec : error_code(asio::error::eof);
        std::memcpy(out, in_.get(), want);
        in_pos_ = want;
        in_end_ = n;
        co_return error_code{};
    }
    asio::awaitable<error_code> write(std::span<const asio::const_buffer> bufs) override
    {
        auto [ec, n] = co_await asio::async_write(sock_, bufs, nothrow_awaitable);
        co_return ec;
    }
    bool write_now(std::span<const std::byte> bytes) noexcept override
    {
        if (!sock_.is_open())
            return false;
        ssize_t n = ::send(sock_.native_handle(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        return n == static_cast<ssize_t>(bytes.size());
    }
    void close() noexcept override
    {
        error_code ec;
        sock_.shutdown(asio::socket_base::shutdown_both, ec);
        sock_.close(ec);
    }

    /// Whether bytes that no one has read yet are held (the server spoke out of turn).
    bool holds_unread() const { return in_pos_ < in_end_; }
    /// The socket, for the TLS stream that takes it over.
    asio::generic::stream_protocol::socket take() { return std::move(sock_); }

private:
    static constexpr std::size_t batch_size = 64 * 1024;
    static constexpr std::size_t direct_min = 16 * 1024;

    asio::generic::stream_protocol::socket sock_;
    std::unique_ptr<std::byte[]> in_;
    std::size_t in_pos_ = 0;   ///< the first byte of in_ not yet read
    std::size_t in_end_ = 0;   ///< the end of what the last recv put in in_
};

/// TLS over the socket a plain stream had. The session reads and writes the socket itself;
/// the session's single reader and single writer are the NBD session's reader and writer.
class tls_stream final : public stream {
public:
    explicit tls_stream(asio::generic::stream_protocol::socket s)
        : sock_(std::make_unique<asio::generic::stream_protocol::socket>(std::move(s)))
    {
    }

    /// Makes the session and runs the handshake; the reason on failure.
    asio::awaitable<std::string> start(std::shared_ptr<const crypto::tls_creds> creds, const std::string& hostname)
    {
        auto t = crypto::tls_session::create(std::move(creds), *sock_, hostname);
        if (!t)
            co_return t.error().desc;
        tls_ = std::move(*t);
        co_return co_await tls_->handshake();
    }

    asio::awaitable<error_code> read(asio::mutable_buffer buf) override
    {
        if (!open_)
            co_return error_code(asio::error::operation_aborted);
        co_return co_await tls_->read(buf);
    }
    asio::awaitable<error_code> write(std::span<const asio::const_buffer> bufs) override
    {
        if (!open_)
            co_return error_code(asio::error::operation_aborted);
        co_return co_await tls_->write(bufs);
    }
    bool write_now(std::span<const std::byte> bytes) noexcept override
    {
        return open_ && tls_ && tls_->send_now(bytes);
    }
    void close() noexcept override
    {
        if (!open_)
            return;
        open_ = false;
        if (tls_)
            tls_->bye();
        error_code ec;
        sock_->shutdown(asio::socket_base::shutdown_both, ec);
        sock_->close(ec);
    }

private:
    // The session refers to the socket: the socket lives on the heap, before the session.
    std::unique_ptr<asio::generic::stream_protocol::socket> sock_;
    std::unique_ptr<crypto::tls_session> tls_;
    bool open_ = true;
};

/// getaddrinfo's words for the resolver's errors (QEMU prints gai_strerror).
std::string resolve_error(const error_code& ec)
{
    if (ec == asio::error::host_not_found)
        return ::gai_strerror(EAI_NONAME);
    if (ec == asio::error::host_not_found_try_again)
        return ::gai_strerror(EAI_AGAIN);
    if (ec == asio::error::service_not_found)
        return ::gai_strerror(EAI_SERVICE);
    return ec.message();
}

std::string errno_text(const error_code& ec)
{
    if (ec.category() == boost::system::system_category())
        return std::strerror(ec.value());
    return ec.message();
}

} // namespace

asio::awaitable<connect_result> connect_plain(const address& a)
{
    auto ex = co_await asio::this_coro::executor;
    asio::generic::stream_protocol::socket sock(ex);
    const std::string failed = "Failed to connect to '" + a.describe() + "': ";
    if (a.unix_socket) {
        asio::local::stream_protocol::endpoint ep(a.path);
        auto [ec] = co_await sock.async_connect(asio::generic::stream_protocol::endpoint(ep), nothrow_awaitable);
        if (ec)
            co_return connect_result{nullptr, failed + errno_text(ec)};
        co_return connect_result{std::make_unique<plain_stream>(std::move(sock)), {}};
    }
    asio::ip::tcp::resolver resolver(ex);
    auto [rec, results] = co_await resolver.async_resolve(a.host, a.port, nothrow_awaitable);
    if (rec)
        co_return connect_result{nullptr, "address resolution failed for " + a.describe() + ": " + resolve_error(rec)};
    error_code last = asio::error::host_not_found;
    for (const auto& r : results) {
        error_code ignored;
        sock.close(ignored);
        auto [ec] =
            co_await sock.async_connect(asio::generic::stream_protocol::endpoint(r.endpoint()), nothrow_awaitable);
        if (!ec) {
            int one = 1;
            ::setsockopt(sock.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            co_return connect_result{std::make_unique<plain_stream>(std::move(sock)), {}};
        }
        last = ec;
    }
    co_return connect_result{nullptr, failed + errno_text(last)};
}

asio::awaitable<std::string> start_tls(std::unique_ptr<stream>& s, std::shared_ptr<const crypto::tls_creds> creds,
                                       const std::string& hostname)
{
    auto* plain = dynamic_cast<plain_stream*>(s.get());
    if (!plain)
        co_return "TLS already enabled";
    // The server answers NBD_OPT_STARTTLS and then waits for our ClientHello: anything after
    // its answer would be plaintext injected before the handshake.
    if (plain->holds_unread())
        co_return "Unexpected data from the server before the TLS handshake";
    auto t = std::make_unique<tls_stream>(plain->take());
    s = std::move(t);
    co_return co_await static_cast<tls_stream&>(*s).start(std::move(creds), hostname);
}

} // namespace bjd::block::nbd_client
