// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// A TLS session (GnuTLS) over a connected Asio stream socket, for C++20 coroutines.
///
/// The socket stays the caller's: the NBD server upgrades its connection's socket after
/// NBD_OPT_STARTTLS, the NBD client wraps its own. The socket is switched to non-blocking
/// mode; GnuTLS reads and writes the fd directly and, when it would block, the session waits
/// with `async_wait` on the socket. One reader and one writer may run at once (the NBD
/// server's read loop and reply writer); two readers or two writers may not.
///
/// Errors are error_codes: asio::error::eof when the peer closed (with or without
/// close_notify), `tls_category()` codes (GnuTLS's) otherwise.
#include "bjd/crypto/objects.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/system/error_code.hpp>

#include <memory>
#include <span>
#include <string>

namespace bjd::crypto {

namespace detail { struct tls_transport; }

namespace asio = boost::asio;
using boost::system::error_code;

/// GnuTLS's error codes, with gnutls_strerror's texts.
const boost::system::error_category& tls_category() noexcept;

class tls_session {
public:
    using socket_type = asio::generic::stream_protocol::socket;

    /// A session for `creds`' endpoint. A client's `hostname` (tls-hostname, or the host it
    /// connects to) is checked against the server's certificate when verify-peer is on; empty
    /// skips the name check. Error: "Unable to set TLS session priority P: …" and the like.
    static qapi::result<std::unique_ptr<tls_session>> create(std::shared_ptr<const tls_creds> creds,
                                                             socket_type& sock, std::string hostname = {});
    ~tls_session();
    tls_session(const tls_session&) = delete;
    tls_session& operator=(const tls_session&) = delete;

    /// Runs the handshake and, with verify-peer, checks the peer's certificate as QEMU does
    /// ("The certificate hasn't got a known issuer", "No certificate peer", "Certificate does
    /// not match the hostname H", and for a client without a hostname "No hostname for
    /// certificate validation", …). Empty on success, else the reason.
    asio::awaitable<std::string> handshake();

    /// After the handshake: the peer's identity for tls-authz, i.e. the distinguished name of
    /// its x509 certificate (empty without one) or its PSK username.
    const std::string& peer_identity() const noexcept { return identity_; }
    /// "TLS1.3" and the cipher suite, for the logs.
    std::string description() const;

    /// Reads some bytes (at least one), from GnuTLS's buffer when it holds any.
    asio::awaitable<std::pair<error_code, std::size_t>> read_some(asio::mutable_buffer buf);
    /// Reads exactly `buf.size()` bytes.
    asio::awaitable<error_code> read(asio::mutable_buffer buf);
    /// Writes all of `bufs` in order; small buffers share records.
    asio::awaitable<error_code> write(std::span<const asio::const_buffer> bufs);
    /// One buffer. A coroutine itself, so that `buf` lives in its frame while the write runs
    /// (a plain function returning write(span) would leave the span pointing at a dead argument).
    asio::awaitable<error_code> write(asio::const_buffer buf)
    {
        co_return co_await write(std::span<const asio::const_buffer>(&buf, 1));
    }
    /// Sends `bytes` as one record if that can be done without waiting (a last message before
    /// closing, such as NBD_CMD_DISC); false when it cannot, or another write is under way.
    bool send_now(std::span<const std::byte> bytes) noexcept;
    /// Sends close_notify if that can be done without waiting (best effort; the caller then
    /// closes the socket).
    void bye() noexcept;

private:
    tls_session(std::shared_ptr<const tls_creds> creds, socket_type& sock);
    asio::awaitable<error_code> wait(bool for_write);
    asio::awaitable<error_code> uncork();
    asio::awaitable<error_code> write_all(std::span<const asio::const_buffer> bufs);
    /// Sends the records gathered in the outbox, waiting for the socket as needed.
    asio::awaitable<error_code> flush();
    std::string check_peer();

    std::shared_ptr<const tls_creds> creds_;
    socket_type& sock_;
    void* session_ = nullptr;   // gnutls_session_t
    std::string hostname_;
    std::string identity_;
    bool writing_ = false;   ///< a write() is under way (send_now must not interleave)
    std::unique_ptr<detail::tls_transport> transport_;   ///< the fd, gathered records, bytes read ahead
};

} // namespace bjd::crypto
