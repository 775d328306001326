// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The export manager: the NBD server's life cycle and the set of block exports, with the
/// semantics and error texts of qemu-storage-daemon 7.2's nbd-server-*, block-export-* and
/// query-block-exports. QMP handlers (lib/qmp/commands/export_cmds.cpp) are glue over this.
///
/// Lives on the main loop; every call must be made there. Owned by the daemon, which must call
/// `shutdown()` before destroying it (and before the block graph goes away).
#include "bjd/crypto/objects.hpp"
#include "bjd/net/listener.hpp"
#include "bjd/export/export.hpp"
#include "bjd/io/engine.hpp"
#include "bjd/io/poll_loop.hpp"
#include "bjd/qapi/error.hpp"
#include "bjd/qapi/event_sink.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::exports {

namespace asio = boost::asio;

/// Where the NBD server listens: unix, inet, or an fd passed by systemd (lib/net).
using listen_address = net::listen_address;

struct nbd_server_options {
    listen_address addr;
    std::optional<std::string> tls_creds;   ///< id of server-endpoint TLS credentials
    std::optional<std::string> tls_authz;   ///< id of an authz object (needs tls_creds)
    std::uint32_t max_connections = 0;      ///< 0 = unlimited
};

/// One row of query-block-exports.
struct export_info {
    std::string type = "nbd";
    std::string id;
    std::string node_name;
    bool shutting_down = false;
};

/// Resource bounds per connection (defaults suit fio qd32 with 1 MiB requests).
struct connection_limits {
    unsigned max_in_flight = 64;                       ///< requests being processed
    std::size_t max_buffered_bytes = 64u << 20;        ///< request/reply payload bytes held
};

namespace detail { class nbd_server; struct connection_tracker; }

class manager {
public:
    /// `on_deleted(id)` runs whenever an export is finally gone (BLOCK_EXPORT_DELETED).
    manager(asio::io_context& loop, std::function<void(const std::string&)> on_deleted);
    /// The daemon's constructor: emits BLOCK_EXPORT_DELETED on `events` (generated emitter).
    manager(asio::io_context& loop, qapi::event_sink& events);
    ~manager();
    /// The graph's gate for outside requests; exports added afterwards pass through it.
    void set_io_gate(block::io_gate& g) noexcept { gate_ = &g; }
    /// Where tls-creds and tls-authz are looked up (the daemon's objects). Without it, a
    /// server with tls-creds cannot start ("No TLS credentials with id 'X'").
    void set_objects(crypto::registry& r) noexcept { objects_ = &r; }
    /// The engine the graph's requests run on (the main loop's). The main loop's large
    /// payload buffers are registered with it, so the 1 MiB reads and writes of its clients
    /// skip pinning their pages. Worker loops free their buffers on their own threads, so
    /// theirs stay unregistered. Call before the first connection.
    void set_io_engine(io::engine& e);
    manager(const manager&) = delete;
    manager& operator=(const manager&) = delete;

    // ---- NBD server ------------------------------------------------------------------------
    /// nbd-server-start. Errors: "NBD server already running", "Failed to bind socket to P: …",
    /// "No TLS credentials with id 'X'", "Object with id 'X' is not TLS credentials",
    /// "Expected TLS credentials for a server endpoint", "'tls-authz' is only supported with
    /// 'tls-creds'". With tls-creds, clients must upgrade with NBD_OPT_STARTTLS; the server
    /// keeps the credentials (even if object-del removes their id) until it stops. tls-authz
    /// is looked up at each handshake, as in QEMU.
    qapi::result<void> start_server(const nbd_server_options& opts);
    /// nbd-server-stop: closes the listener and deletes every NBD export (hard).
    /// Error: "NBD server not running".
    qapi::result<void> stop_server();
    /// The QMP command's `stop_server`: also waits until the exports it deleted are gone, so
    /// their BLOCK_EXPORT_DELETED events precede the answer, as in QEMU (nbd_server_free
    /// waits for blk_exp_close_all_type).
    asio::awaitable<qapi::result<void>> stop_server_and_wait();
    bool server_running() const noexcept { return bool(server_); }
    /// The bound address ("unix:/p" or "127.0.0.1:12345"), empty when not running.
    std::string server_address() const;

    /// Serves one already-connected stream socket (socket activation, unit tests), with or
    /// without a running listener.
    void serve(asio::generic::stream_protocol::socket sock);

    // ---- exports ---------------------------------------------------------------------------
    /// The checks block-export-add makes before it looks the node up: "Invalid block export
    /// id", "Block export id 'X' is already in use".
    qapi::result<void> check_new_id(std::string_view id) const;
    /// block-export-add / nbd-server-add with the node already looked up. Errors: "NBD server
    /// not running", "Invalid block export id", "Block export id 'X' is already in use",
    /// "NBD server already has export named 'X'", "Block node is read-only" (writable export
    /// of a read-only node), "export name 'X' too long".
    qapi::result<void> add(export_options opts, std::shared_ptr<block::node> n);
    /// block-export-del (`hard` = mode hard). Errors: "Export 'X' is not found",
    /// "export 'X' still in use" (safe mode with clients), "Block export 'X' is already
    /// shutting down"... Deletion (and `on_deleted`) happens once no client is left.
    qapi::result<void> del(std::string_view id, bool hard);
    /// The QMP commands' `del`: in safe mode the only clients left, if any, have hung up, so
    /// this also waits until the export is gone. BLOCK_EXPORT_DELETED then precedes the
    /// answer, as it does in QEMU for an export without clients.
    asio::awaitable<qapi::result<void>> remove(std::string id, bool hard);
    /// query-block-exports: newest first, like QEMU.
    std::vector<export_info> query() const;

    /// The export a client asks for by NBD name (null if none or shutting down).
    std::shared_ptr<block_export> find_by_name(std::string_view name) const;
    std::shared_ptr<block_export> find_by_id(std::string_view id) const;
    /// Exports visible to NBD_OPT_LIST, in creation order.
    std::vector<std::shared_ptr<block_export>> listable() const;

    const connection_limits& limits() const noexcept { return limits_; }
    /// The running server's TLS credentials (null: plaintext) and tls-authz id.
    const std::shared_ptr<crypto::tls_creds>& tls_creds() const noexcept { return tls_creds_; }
    const std::optional<std::string>& tls_authz() const noexcept { return tls_authz_; }
    const crypto::registry* objects() const noexcept { return objects_; }
    void set_limits(const connection_limits& l) { limits_ = l; }
    /// Event loops with a thread each that serve NBD connections besides the main loop
    /// (docs/nbd-threads.md); none unless set. Takes effect if called before the first
    /// connection. `polling`: how they poll before they sleep (docs/polling.md).
    void set_worker_loops(unsigned n, const io::poll_params& polling = {});
    /// The polling of the worker loops started so far (they start with the first
    /// connection), loop 1 first.
    std::vector<io::poll_stats> worker_loop_stats() const;
    /// Main loop only: the NBD requests clients are waiting on, on every loop (the main loop
    /// carries out all their block requests). What the main loop's `--poll-queued` counts.
    std::uint64_t requests_executing() const noexcept;

    /// Daemon shutdown: stops the server, hard-deletes every export (emitting their events)
    /// and waits until every connection has finished its in-flight requests.
    asio::awaitable<void> shutdown();

    asio::io_context& loop() noexcept { return loop_; }

private:
    void finish_delete(const std::string& id);
    /// Until the export `id` that is shutting down is gone (or the id names another export).
    asio::awaitable<void> wait_gone(const std::string& id);

    asio::io_context& loop_;
    block::io_gate* gate_ = nullptr;
    crypto::registry* objects_ = nullptr;
    std::shared_ptr<crypto::tls_creds> tls_creds_;
    std::optional<std::string> tls_authz_;
    std::function<void(const std::string&)> on_deleted_;
    std::vector<std::shared_ptr<block_export>> exports_;   // creation order
    std::unique_ptr<detail::nbd_server> server_;
    std::shared_ptr<detail::connection_tracker> tracker_;
    asio::steady_timer gone_;   ///< cancelled whenever an export is finally deleted
    connection_limits limits_;
};

} // namespace bjd::exports
