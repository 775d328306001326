// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The block graph: every node by name, blockdev-add/blockdev-del, and lookups by the names
/// QMP commands take. Lives on the main loop; every call must be made there.
///
/// Closing. A node's in-memory state (a qcow2 node's L2 tables and refcount blocks) is
/// written back by `flush()`; the graph flushes before it lets a node go, as QEMU's
/// bdrv_close() does. Code that is done with a node hands it to `close` (or `close_later`)
/// rather than erasing it: the node leaves the graph, is flushed unless read-only (or it
/// holds nothing to write back: `node::flush_on_close`), and is released, and so are the
/// children nobody else holds — parent before child, since a format's flush writes into its
/// file. At exit `close_all` flushes every node that is left.
#include "bjd/block/backend.hpp"
#include "bjd/block/io_gate.hpp"
#include "bjd/block/node.hpp"
#include "bjd/io/engine.hpp"
#include "bjd/qapi/error.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::qapi { struct blockdev_options; }
namespace bjd::crypto { class registry; }

namespace bjd::block {

class graph {
public:
    /// `engine` serves aio=io_uring and aio=native (which blockjobd maps to io_uring; it may be
    /// the thread-pool fallback when io_uring is unusable); `threads` serves aio=threads.
    graph(io::engine& engine, io::engine& threads);
    ~graph();

    io::engine& engine() noexcept { return engine_; }
    const io::engine& engine() const noexcept { return engine_; }
    io::engine& thread_engine() noexcept { return threads_; }
    /// The gate requests from outside the graph (exports) pass; transactions drain it.
    io_gate& gate() noexcept { return gate_; }
    /// The daemon's objects, where nodes look up what they name: the nbd driver its tls-creds,
    /// rbd its key-secret. Without it every lookup fails ("No TLS credentials with id 'X'").
    void set_objects(const crypto::registry& r) noexcept { objects_ = &r; }
    const crypto::registry* objects() const noexcept { return objects_; }

    /// blockdev-add: opens the node (and inline children), registers it as monitor-owned.
    /// Errors carry QEMU 7.2's texts ("Duplicate nodes with node-name='X'", "Could not open
    /// 'F': No such file or directory", …).
    asio::awaitable<qapi::result<std::shared_ptr<node>>> add(const qapi::blockdev_options& opts);

    /// Opens a node like `add` but without making it monitor-owned (inline children,
    /// drive-mirror targets). `top_level` requires a node-name.
    asio::awaitable<qapi::result<std::shared_ptr<node>>> open(const qapi::blockdev_options& opts, bool top_level);

    /// Opens the backing chain a qcow2 node's header names, as blockdev-add does without
    /// `backing` (relative to the image, read-only, "#blockN" names, loops refused), and
    /// attaches it as the node's backing child (drive-mirror mode=existing at completion).
    /// No-op for other drivers, an empty header backing file, or an attached backing. On
    /// error ("Could not open backing file: …") nothing is attached or registered.
    asio::awaitable<qapi::result<void>> open_backing_chain(node& n);

    /// blockdev-del: "Failed to find node with node-name='X'", "Node X is not owned by the
    /// monitor", "Node 'X' is busy: …", "Node X is in use", "Block device X is in use".
    /// On success the node is closed (`close`) before this returns: its metadata is in the
    /// file and its image locks are released.
    asio::awaitable<qapi::result<void>> del(std::string node_name);

    /// Lets `n` go: it leaves the graph at once, then is flushed unless read-only or
    /// `!flush_on_close()` (a failed flush is logged, not returned: the node goes anyway, as
    /// in QEMU) and released. Each child the graph registered that is not monitor-owned and
    /// that only closing nodes hold follows, parents before children. No-op when `n` is null,
    /// not in the graph, or still has parents. Monitor ownership of `n` itself is the caller's business (blockdev-del
    /// closes monitor-owned nodes; media commands only their own).
    asio::awaitable<void> close(std::shared_ptr<node> n);
    /// `close` for callers that cannot wait (job callbacks): `n` and its orphaned children
    /// leave the graph before this returns, their flush and release run on `ex`; until then
    /// they still hold their children and image locks. `wait_for_closes` waits for them.
    void close_later(asio::any_io_executor ex, std::shared_ptr<node> n);
    /// Closes `n` (`close_later` on `ex`) as soon as its last user lets it go, as QEMU frees
    /// a node that only its users held: the overlay blockdev-snapshot-sync opens. `n` must be
    /// in the graph and have a parent already.
    void close_when_unused(asio::any_io_executor ex, const std::shared_ptr<node>& n);
    /// Returns once no close is in progress. The QMP dispatcher awaits it before each command,
    /// so that a command sees the graph as a synchronous close (QEMU's) would have left it.
    asio::awaitable<void> wait_for_closes();
    /// Daemon exit, before the I/O engines drain: waits for closes in progress, then flushes
    /// every writable node (`flush_on_close`), parents before children, so that everything
    /// still in memory reaches the files. The nodes stay; the graph's destructor releases them.
    asio::awaitable<void> close_all();

    /// The node called `name`, or null.
    std::shared_ptr<node> find(std::string_view name) const;

    /// QEMU's lookup for `device` arguments (drive name first, then node-name): a drive's
    /// medium, "Device 'X' has no medium", "Cannot find device='X' nor node-name='X'".
    qapi::result<std::shared_ptr<node>> lookup(std::string_view device) const;
    /// QEMU's bdrv_lookup_bs with both names (block_resize, blockdev-snapshot-sync): `device`
    /// names a drive only, `node_name` a node. "Device 'd' has no medium", "Cannot find
    /// device='d' nor node-name='n'" (an absent name shows as '').
    qapi::result<std::shared_ptr<node>> lookup(const std::optional<std::string>& device,
                                               const std::optional<std::string>& node_name) const;

    /// Registers a node made elsewhere (filters, job targets). Its name must be unique; an empty
    /// name is not allowed — use `auto_name()`.
    void insert(std::shared_ptr<node> n);
    /// Forgets a node without flushing it. Code done with a node calls `close` instead.
    void erase(const node& n);

    /// A fresh "#blockNNN" name.
    std::string auto_name();

    /// Every node, in creation order.
    std::vector<std::shared_ptr<node>> nodes() const;

    /// The named drives (backend.hpp).
    backend_table& drives() noexcept { return drives_; }
    const backend_table& drives() const noexcept { return drives_; }

private:
    /// Erases `n` and the children that close with it; returns them parents first.
    std::vector<std::shared_ptr<node>> take_closing(std::shared_ptr<node> n);
    asio::awaitable<void> close_taken(std::vector<std::shared_ptr<node>> nodes);

    io::engine& engine_;
    io::engine& threads_;
    const crypto::registry* objects_ = nullptr;
    io_gate gate_;
    std::vector<std::shared_ptr<node>> nodes_;
    unsigned closing_ = 0;                          ///< close_taken runs not yet finished
    std::vector<asio::steady_timer*> close_waiters_;   ///< close_all calls waiting for them
    unsigned next_auto_ = 0;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);   ///< unused hooks outlive nothing
    backend_table drives_{*this};   // after nodes_: drives go first, dropping their media edges
};

/// "Invalid node-name: 'X'" unless `name` starts with a letter and has only letters, digits,
/// '-', '.', '_' (QEMU's id_wellformed), and "Node name too long" past 31 characters.
qapi::result<void> check_node_name(std::string_view name);

} // namespace bjd::block
