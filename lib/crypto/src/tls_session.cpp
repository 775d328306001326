// SPDX-License-Identifier: MIT
// TLS over an Asio socket: GnuTLS on a non-blocking fd, waiting with async_wait on EAGAIN.
#include "bjd/crypto/tls_session.hpp"

#include "bjd/nothrow_awaitable.hpp"
#include "tls_creds_data.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/error.hpp>

#include <gnutls/x509.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include <sys/socket.h>
#include <sys/uio.h>

namespace bjd::crypto {

namespace detail {
/// What GnuTLS's pull and push see: the fd, records write() gathers, and bytes read ahead.
struct tls_transport {
    int fd = -1;
    bool gather = false;      ///< write() is gathering records
    std::vector<char> buf;    ///< gathered records; [off, size) not sent yet
    std::size_t off = 0;
    std::unique_ptr<char[]> in;   ///< read ahead; [in_pos, in_end) not given to GnuTLS yet
    std::size_t in_pos = 0;
    std::size_t in_end = 0;
};
} // namespace detail

namespace {

/// Buffers below this size are gathered into shared records; larger ones are sent as they are.
constexpr std::size_t cork_below = 16 * 1024;
/// Flush the gathered records once they hold this much.
constexpr std::size_t cork_limit = 256 * 1024;
/// A write gathers this many bytes of encrypted records before it hands them to the kernel
/// in one sendmsg, and then lets the loop run. One sendmsg per 16 KiB record (GnuTLS's own
/// push) wakes the reader on the other end once per record and keeps the loop busy with
/// syscalls; and without a pause a batch of replies (the NBD server queues up to 64 READ
/// replies, megabytes) keeps the loop from reading requests and reaping the disk reads that
/// would overlap with the encryption.
constexpr std::size_t gather_limit = 256 * 1024;
/// The most one recv reads ahead of GnuTLS: about four full records (16 KiB of data each,
/// and their headers and tags).
constexpr std::size_t read_ahead = 64 * 1024 + 4 * 256;

class category final : public boost::system::error_category {
public:
    const char* name() const noexcept override { return "gnutls"; }
    std::string message(int ev) const override { return gnutls_strerror(ev); }
};

gnutls_session_t S(void* p) { return static_cast<gnutls_session_t>(p); }

/// GnuTLS's pull: it asks for a record's 5-byte header and then for its body, two recvs per
/// record of at most 16 KiB. One recv of up to `read_ahead` bytes takes every record that
/// has come (a 1 MiB NBD write is 64 records), and the pulls are served from it. GnuTLS
/// only waits (EAGAIN) once what was read ahead is used up, so a wait on the socket
/// never sleeps on bytes already read.
ssize_t pull(gnutls_transport_ptr_t p, void* buf, size_t len)
{
    auto& t = *static_cast<detail::tls_transport*>(p);
    if (t.in_pos == t.in_end) {
        ssize_t n;
        do
            n = ::recv(t.fd, t.in.get(), read_ahead, 0);
        while (n < 0 && errno == EINTR);
        if (n <= 0)
            return n;   // GnuTLS reads errno (EAGAIN → GNUTLS_E_AGAIN)
        t.in_pos = 0;
        t.in_end = std::size_t(n);
    }
    const std::size_t n = std::min(len, t.in_end - t.in_pos);
    std::memcpy(buf, t.in.get() + t.in_pos, n);
    t.in_pos += n;
    return ssize_t(n);
}

ssize_t send_iov(int fd, const iovec* iov, int iovcnt)
{
    msghdr m{};
    m.msg_iov = const_cast<iovec*>(iov);
    m.msg_iovlen = std::size_t(iovcnt);
    for (;;) {
        ssize_t n = ::sendmsg(fd, &m, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        return n;   // GnuTLS reads errno (EAGAIN → GNUTLS_E_AGAIN)
    }
}

/// GnuTLS's push: while a write() gathers (or still holds gathered records, which a record
/// the reader sends, a TLS 1.3 key update, must follow), records are appended to the outbox;
/// otherwise they go straight to the socket.
ssize_t push_vec(gnutls_transport_ptr_t p, const giovec_t* iov, int iovcnt)
{
    auto& o = *static_cast<detail::tls_transport*>(p);
    if (!o.gather && o.off == o.buf.size())
        return send_iov(o.fd, reinterpret_cast<const iovec*>(iov), iovcnt);
    std::size_t total = 0;
    for (int i = 0; i < iovcnt; ++i) {
        const char* b = static_cast<const char*>(iov[i].iov_base);
        o.buf.insert(o.buf.end(), b, b + iov[i].iov_len);
        total += iov[i].iov_len;
    }
    return ssize_t(total);
}

error_code tls_error(int rc)
{
    if (rc == GNUTLS_E_PREMATURE_TERMINATION)
        return asio::error::eof;
    return {rc, tls_category()};
}

} // namespace

const boost::system::error_category& tls_category() noexcept
{
    static const category c;
    return c;
}

tls_session::tls_session(std::shared_ptr<const tls_creds> creds, socket_type& sock)
    : creds_(std::move(creds)), sock_(sock)
{
}

tls_session::~tls_session()
{
    if (session_)
        gnutls_deinit(S(session_));
}

qapi::result<std::unique_ptr<tls_session>> tls_session::create(std::shared_ptr<const tls_creds> creds,
                                                                socket_type& sock, std::string hostname)
{
    const tls_creds_data& d = creds->data();
    const bool server = d.ep == endpoint::server;
    std::unique_ptr<tls_session> t(new tls_session(creds, sock));
    t->hostname_ = std::move(hostname);
    gnutls_session_t s = nullptr;
    if (int rc = gnutls_init(&s, server ? GNUTLS_SERVER : GNUTLS_CLIENT); rc < 0)
        return qapi::generic(std::string("Cannot initialize TLS session: ") + gnutls_strerror(rc));
    t->session_ = s;
    if (int rc = gnutls_priority_set_direct(s, d.priority.c_str(), nullptr); rc < 0)
        return qapi::generic("Unable to set TLS session priority " + d.priority + ": " + gnutls_strerror(rc));
    int rc = 0;
    if (d.x509) {
        rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, d.x509);
        if (server && d.verify_peer)
            gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUEST);
        if (!server && !t->hostname_.empty())
            gnutls_server_name_set(s, GNUTLS_NAME_DNS, t->hostname_.data(), t->hostname_.size());
    } else if (d.psk_server) {
        rc = gnutls_credentials_set(s, GNUTLS_CRD_PSK, d.psk_server);
    } else {
        rc = gnutls_credentials_set(s, GNUTLS_CRD_PSK, d.psk_client);
    }
    if (rc < 0)
        return qapi::generic(std::string("Cannot set session credentials: ") + gnutls_strerror(rc));

    boost::system::error_code ec;
    sock.non_blocking(true, ec);
    if (ec)
        return qapi::generic("Cannot make the socket non-blocking: " + ec.message());
    t->transport_ = std::make_unique<detail::tls_transport>();
    t->transport_->fd = sock.native_handle();
    t->transport_->buf.reserve(gather_limit + 32 * 1024);
    t->transport_->in = std::make_unique<char[]>(read_ahead);
    gnutls_transport_set_ptr(s, t->transport_.get());
    gnutls_transport_set_pull_function(s, pull);
    gnutls_transport_set_vec_push_function(s, push_vec);
    return t;
}

asio::awaitable<error_code> tls_session::wait(bool for_write)
{
    auto [ec] =
        co_await sock_.async_wait(for_write ? socket_type::wait_write : socket_type::wait_read, nothrow_awaitable);
    co_return ec;
}

asio::awaitable<std::string> tls_session::handshake()
{
    gnutls_session_t s = S(session_);
    for (;;) {
        int rc = gnutls_handshake(s);
        if (rc == GNUTLS_E_SUCCESS)
            break;
        if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
            if (auto ec = co_await wait(gnutls_record_get_direction(s) == 1); ec)
                co_return "TLS handshake failed: " + ec.message();
            continue;
        }
        if (!gnutls_error_is_fatal(rc))
            continue;
        co_return std::string("TLS handshake failed: ") + gnutls_strerror(rc);
    }
    co_return check_peer();
}

std::string tls_session::check_peer()
{
    gnutls_session_t s = S(session_);
    const tls_creds_data& d = creds_->data();
    if (d.psk_server) {
        if (const char* u = gnutls_psk_server_get_username(s))
            identity_ = u;
        return {};
    }
    if (!d.x509)
        return {};
    unsigned n = 0;
    const gnutls_datum_t* certs = gnutls_certificate_get_peers(s, &n);
    if (certs && n > 0) {
        gnutls_x509_crt_t crt;
        if (gnutls_x509_crt_init(&crt) == 0) {
            if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) == 0) {
                gnutls_datum_t dn{};
                if (gnutls_x509_crt_get_dn3(crt, &dn, GNUTLS_X509_DN_FLAG_COMPAT) == 0) {
                    identity_.assign(reinterpret_cast<const char*>(dn.data), dn.size);
                    gnutls_free(dn.data);
                }
            }
            gnutls_x509_crt_deinit(crt);
        }
    }
    if (!d.verify_peer)
        return {};
    if (!certs || n == 0)
        return "No certificate peer";
    unsigned status = 0;
    const bool client = d.ep == endpoint::client;
    int rc = gnutls_certificate_verify_peers3(s, client && !hostname_.empty() ? hostname_.c_str() : nullptr, &status);
    if (rc < 0)
        return std::string("Cannot get peer certificate status: ") + gnutls_strerror(rc);
    if (status == 0) {
        // QEMU's qcrypto_tls_session_check_certificate: a client must know whom it expects.
        if (client && hostname_.empty())
            return "No hostname for certificate validation";
        return {};
    }
    // QEMU's texts for the common cases; GnuTLS's description otherwise.
    if (status & GNUTLS_CERT_REVOKED)
        return "The certificate has been revoked";
    if (status & GNUTLS_CERT_SIGNER_NOT_FOUND)
        return "The certificate hasn't got a known issuer";
    if (status & GNUTLS_CERT_INSECURE_ALGORITHM)
        return "The certificate uses an insecure algorithm";
    if (status & GNUTLS_CERT_EXPIRED)
        return "The certificate has expired";
    if (status & GNUTLS_CERT_NOT_ACTIVATED)
        return "The certificate is not yet activated";
    if (status & GNUTLS_CERT_UNEXPECTED_OWNER)
        return "Certificate does not match the hostname " + hostname_;
    gnutls_datum_t out{};
    std::string text = "The certificate is not trusted";
    if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) == 0) {
        text += std::string(": ") + reinterpret_cast<const char*>(out.data);
        gnutls_free(out.data);
    }
    return text;
}

std::string tls_session::description() const
{
    gnutls_session_t s = S(session_);
    const char* v = gnutls_protocol_get_name(gnutls_protocol_get_version(s));
    char* desc = gnutls_session_get_desc(s);
    std::string out = desc ? desc : (v ? v : "TLS");
    gnutls_free(desc);
    return out;
}

asio::awaitable<std::pair<error_code, std::size_t>> tls_session::read_some(asio::mutable_buffer buf)
{
    gnutls_session_t s = S(session_);
    if (buf.size() == 0)
        co_return std::pair{error_code{}, std::size_t(0)};
    for (;;) {
        ssize_t n = gnutls_record_recv(s, buf.data(), buf.size());
        if (n > 0)
            co_return std::pair{error_code{}, std::size_t(n)};
        if (n == 0)
            co_return std::pair{error_code(asio::error::eof), std::size_t(0)};
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
            if (auto ec = co_await wait(gnutls_record_get_direction(s) == 1); ec)
                co_return std::pair{ec, std::size_t(0)};
            continue;
        }
        co_return std::pair{tls_error(int(n)), std::size_t(0)};
    }
}

asio::awaitable<error_code> tls_session::read(asio::mutable_buffer buf)
{
    auto* p = static_cast<char*>(buf.data());
    std::size_t left = buf.size();
    while (left > 0) {
        auto [ec, n] = co_await read_some(asio::buffer(p, left));
        if (ec)
            co_return ec;
        p += n;
        left -= n;
    }
    co_return error_code{};
}

asio::awaitable<error_code> tls_session::uncork()
{
    gnutls_session_t s = S(session_);
    while (gnutls_record_check_corked(s) > 0) {
        int rc = gnutls_record_uncork(s, 0);
        if (rc >= 0)
            continue;
        if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
            if (auto ec = co_await wait(true); ec)
                co_return ec;
            continue;
        }
        co_return tls_error(rc);
    }
    co_return error_code{};
}

asio::awaitable<error_code> tls_session::write(std::span<const asio::const_buffer> bufs)
{
    writing_ = true;
    transport_->gather = true;
    auto ec = co_await write_all(bufs);
    if (!ec)
        ec = co_await flush();
    transport_->gather = false;
    writing_ = false;
    co_return ec;
}

asio::awaitable<error_code> tls_session::flush()
{
    auto& o = *transport_;
    while (o.off < o.buf.size()) {
        iovec v{o.buf.data() + o.off, o.buf.size() - o.off};
        ssize_t n = send_iov(o.fd, &v, 1);
        if (n >= 0) {
            o.off += std::size_t(n);
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (auto ec = co_await wait(true); ec)
                co_return ec;
            continue;
        }
        co_return error_code(errno, boost::system::system_category());
    }
    o.buf.clear();
    o.off = 0;
    co_return error_code{};
}

bool tls_session::send_now(std::span<const std::byte> bytes) noexcept
{
    if (!session_ || writing_ || bytes.empty() || transport_->off != transport_->buf.size())
        return false;
    ssize_t n = gnutls_record_send(S(session_), bytes.data(), bytes.size());
    return n == ssize_t(bytes.size());
}

asio::awaitable<error_code> tls_session::write_all(std::span<const asio::const_buffer> bufs)
{
    gnutls_session_t s = S(session_);
    bool corked = false;
    std::size_t gathered = 0;
    for (const auto& b : bufs) {
        const char* p = static_cast<const char*>(b.data());
        std::size_t left = b.size();
        if (left == 0)
            continue;
        if (left < cork_below) {
            if (!corked) {
                gnutls_record_cork(s);
                corked = true;
            }
            // Corked, GnuTLS only copies: this never blocks.
            while (left > 0) {
                ssize_t n = gnutls_record_send(s, p, left);
                if (n < 0)
                    co_return tls_error(int(n));
                p += n;
                left -= std::size_t(n);
            }
            gathered += b.size();
            if (gathered < cork_limit)
                continue;
        }
        if (corked) {
            corked = false;
            gathered = 0;
            if (auto ec = co_await uncork(); ec)
                co_return ec;
        }
        while (left > 0) {
            // Gathering, the push only appends: GnuTLS encrypts one record and returns.
            ssize_t n = gnutls_record_send(s, p, left);
            if (n < 0)
                co_return tls_error(int(n));
            p += n;
            left -= std::size_t(n);
            if (transport_->buf.size() - transport_->off >= gather_limit) {
                if (auto ec = co_await flush(); ec)
                    co_return ec;
                co_await asio::post(sock_.get_executor(), asio::use_awaitable);
            }
        }
    }
    if (corked)
        co_return co_await uncork();
    co_return error_code{};
}

void tls_session::bye() noexcept
{
    if (session_ && !writing_ && transport_->off == transport_->buf.size())
        (void)gnutls_bye(S(session_), GNUTLS_SHUT_WR);   // non-blocking: EAGAIN just gives up
}

} // namespace bjd::crypto
