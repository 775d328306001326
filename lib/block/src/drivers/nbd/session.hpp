// SPDX-License-Identifier: MIT
#pragma once
// One NBD client connection over a `stream`: the fixed-newstyle handshake (NBD_OPT_GO with
// NBD_INFO_BLOCK_SIZE, structured replies, base:allocation) and the transmission phase.
//
// Transmission: any number of requests are in flight at once. A single writer coroutine
// sends queued requests (header and WRITE payload) in order, gathering what is queued into
// one write; a single reader coroutine decodes replies and dispatches them by cookie to the
// waiting requests, reading READ data straight into the caller's buffer. When the stream
// breaks (EOF, reset, a protocol error) every request still waiting comes back `lost`, so
// the caller may send it again on a new connection.
#include "stream.hpp"

#include "bjd/block/node.hpp"
#include "bjd/nbd/protocol.hpp"

#include <boost/asio/steady_timer.hpp>

#include <deque>
#include <functional>
#include <unordered_map>

namespace bjd::block::nbd_client {

/// What the server told us about the export during the handshake.
struct export_info {
    std::uint64_t size = 0;
    std::uint16_t flags = 0;                 ///< NBD transmission flags (nbd::tflag_*)
    std::uint32_t min_block = 0;             ///< NBD_INFO_BLOCK_SIZE, or the defaults
    std::uint32_t pref_block = 0;
    std::uint32_t max_block = 0;
    bool structured = false;                 ///< NBD_OPT_STRUCTURED_REPLY accepted
    bool allocation = false;                 ///< base:allocation (or x-dirty-bitmap's context) selected
    std::uint32_t allocation_id = 0;         ///< its context id
    /// x-dirty-bitmap=qemu:allocation-depth: depths above 2 read as 2 (QEMU's mapping, so that
    /// depth 0 shows as data, 1 as a hole and 2 or more as zero in `qemu-img map`).
    bool allocation_depth = false;

    bool has(std::uint16_t f) const noexcept { return (flags & f) != 0; }
};

/// Runs the handshake for `export_name` on `s`. With `tls_creds`, NBD_OPT_STARTTLS comes
/// first and `s` is replaced by the TLS stream the rest runs over (`tls_hostname` is checked
/// against the server's certificate). `meta_context` (x-dirty-bitmap) is asked for instead
/// of base:allocation and must be granted. Errors in QEMU's words ("Requested export not
/// available", "Server don't support STARTTLS option", ...).
struct handshake_result {
    export_info info;
    std::string error;   ///< empty on success
};
asio::awaitable<handshake_result> handshake(std::unique_ptr<stream>& s, const std::string& export_name,
                                            std::shared_ptr<const crypto::tls_creds> tls_creds = {},
                                            const std::string& tls_hostname = {},
                                            const std::string& meta_context = {});

/// How a request ended.
struct outcome {
    int err = 0;          ///< errno from the server's reply, 0 on success
    bool lost = false;    ///< the connection broke before the whole reply arrived
};

class session : public std::enable_shared_from_this<session> {
public:
    session(asio::any_io_executor ex, std::unique_ptr<stream> s, export_info info, std::string log_name);
    ~session();

    /// Starts the reader and writer coroutines. `on_lost` runs once, on the loop, when the
    /// stream breaks (not after `close`).
    void start(std::function<void(session*)> on_lost);

    /// Sends one request and waits for its reply. `payload`: WRITE data; `into`: where READ
    /// data goes (its size is the request length); `status`: the first base:allocation
    /// extent of a BLOCK_STATUS reply.
    asio::awaitable<outcome> request(nbd::request hdr, std::span<const std::byte> payload = {},
                                     std::span<std::byte> into = {}, extent* status = nullptr);

    /// Ends the connection: NBD_CMD_DISC when nothing is in the middle of being sent, then
    /// the stream closes; requests still waiting come back `lost`.
    void close();

    bool alive() const noexcept { return alive_; }
    const export_info& info() const noexcept { return info_; }

private:
    struct pending {
        nbd::request hdr;
        std::span<std::byte> into;
        extent* status = nullptr;
        bool status_seen = false;
        outcome out;
        bool done = false;
        asio::steady_timer* wake = nullptr;
    };
    struct outgoing {
        std::array<std::byte, nbd::request_size> head;
        std::span<const std::byte> payload;
    };

    static asio::awaitable<void> reader(std::shared_ptr<session> self);
    static asio::awaitable<void> writer(std::shared_ptr<session> self);
    /// Handles one structured chunk of `length` bytes for `p`; false on a protocol error
    /// or a broken stream.
    asio::awaitable<bool> chunk(pending& p, std::uint16_t type, std::uint32_t length);
    asio::awaitable<bool> skip(std::uint32_t length);
    void finish(pending& p);
    void broken(const char* why);

    asio::any_io_executor ex_;
    std::unique_ptr<stream> stream_;
    export_info info_;
    std::string log_name_;
    std::function<void(session*)> on_lost_;
    bool alive_ = true;
    bool closed_ = false;          ///< close() called: no on_lost
    bool writing_ = false;
    std::uint64_t next_cookie_ = 1;
    std::unordered_map<std::uint64_t, pending*> pending_;
    std::deque<outgoing> queue_;
    asio::steady_timer writer_wake_;
};

} // namespace bjd::block::nbd_client
