// SPDX-License-Identifier: MIT
#pragma once
// The byte stream an NBD client connection runs over. The handshake and the transmission
// phase only read and write whole buffers through this interface, so after NBD_OPT_STARTTLS
// the TLS stream (`start_tls`) replaces the plain socket without touching them.
#include "bjd/block/driver.hpp"
#include "bjd/crypto/objects.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>

#include <memory>
#include <span>
#include <string>

namespace bjd::block::nbd_client {

namespace asio = boost::asio;
using boost::system::error_code;

class stream {
public:
    virtual ~stream() = default;
    /// Reads exactly `buf.size()` bytes; an error (EOF included) otherwise.
    virtual asio::awaitable<error_code> read(asio::mutable_buffer buf) = 0;
    /// Writes all of `bufs`, in order.
    virtual asio::awaitable<error_code> write(std::span<const asio::const_buffer> bufs) = 0;
    /// Writes `bytes` at once if the stream can without waiting (a small message at close);
    /// false when it cannot (the caller then just closes).
    virtual bool write_now(std::span<const std::byte> bytes) noexcept = 0;
    /// Aborts the stream: pending reads and writes fail. Idempotent.
    virtual void close() noexcept = 0;
};

using address = nbd_server_address;

/// Connects a plain (unencrypted) stream. Errors in QEMU's words: "Failed to connect to
/// '/x.sock': No such file or directory", "address resolution failed for h:p: Name or
/// service not known".
struct connect_result {
    std::unique_ptr<stream> s;
    std::string error;   ///< set when `s` is null
};
asio::awaitable<connect_result> connect_plain(const address& a);

/// Runs the TLS handshake (GnuTLS, `crypto::tls_session`) over the plain stream `s` made by
/// connect_plain, after the server acknowledged NBD_OPT_STARTTLS, and on success replaces
/// `s` with the TLS stream over the same socket. `hostname` is checked against an x509
/// server certificate (empty: "No hostname for certificate validation" when verify-peer is
/// on). Returns the reason on failure, in QEMU's words ("Certificate does not match the
/// hostname H", "TLS handshake failed: …"); `s` is then unusable.
asio::awaitable<std::string> start_tls(std::unique_ptr<stream>& s, std::shared_ptr<const crypto::tls_creds> creds,
                                       const std::string& hostname);

} // namespace bjd::block::nbd_client
