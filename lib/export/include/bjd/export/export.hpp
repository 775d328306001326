// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// One block export: a named, client-visible view of a block node.
///
/// The export holds its node through a `block::edge` (parent_kind::export_), so a mirror pivot
/// (`block::replace_node`) redirects it; every client request looks the node up through the
/// edge at the moment it runs. Lives on the main loop; every call must be made there.
#include "bjd/block/bitmaps.hpp"
#include "bjd/block/io_gate.hpp"
#include "bjd/block/node.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace bjd::exports {

/// A dirty bitmap to serve as qemu:dirty-bitmap:NAME (block-export-add `bitmaps`).
struct export_bitmap {
    std::string name;
    /// Null: search the exported node and its filter/backing chain. Else the node a
    /// {node, name} pair named, looked up by the caller.
    std::shared_ptr<block::node> node;
    /// The node as the pair named it, for "Node 'x' not found" when `node` is null.
    std::optional<std::string> node_ref;
};

/// What block-export-add (type nbd) and nbd-server-add configure.
struct export_options {
    std::string id;                          ///< block export id (QMP `id`)
    std::string node_name;                   ///< the node as named by the user
    std::string name;                        ///< NBD export name (defaults to node_name)
    std::optional<std::string> description;  ///< NBD_INFO_DESCRIPTION
    bool writable = false;
    bool writethrough = false;               ///< every write is FUA (QEMU: flush after write)
    std::vector<export_bitmap> bitmaps;      ///< served as qemu:dirty-bitmap:NAME
};

/// A connected client, as the export sees it: something that can be told to go away.
class client {
public:
    virtual ~client() = default;
    /// Closes the connection; in-flight requests still complete (acknowledged writes are never
    /// lost), replies that cannot be sent any more are dropped.
    virtual void close() = 0;
    /// True once the peer has hung up (EOF seen by the kernel, not necessarily by us yet) or
    /// the connection is closing: such a client no longer keeps a safe block-export-del out.
    virtual bool hung_up() const = 0;
};

class block_export {
public:
    /// `gate`: the graph's gate for requests from outside (none: requests never wait).
    block_export(export_options opts, std::shared_ptr<block::node> n, block::io_gate* gate = nullptr);
    ~block_export();
    /// Takes the permissions the export needs on its node (image locks included); fails
    /// with "Failed to get \"write\" lock" and the like when another user forbids them.
    qapi::result<void> claim_permissions();
    block_export(const block_export&) = delete;
    block_export& operator=(const block_export&) = delete;

    const std::string& id() const noexcept { return opts_.id; }
    const std::string& name() const noexcept { return opts_.name; }
    const export_options& options() const noexcept { return opts_; }

    /// The node requests go to right now (after any pivot), or null once released.
    block::node* node() const noexcept { return edge_.get(); }
    std::shared_ptr<block::node> node_shared() const { return edge_.shared(); }
    /// Before a client's request reaches the node: waits while a drained section (a
    /// transaction) is open; the request counts as in flight while the pass lives.
    boost::asio::awaitable<block::io_gate::pass> enter_gate();
    /// `enter_gate` without waiting: the pass, or none while a section is open.
    std::optional<block::io_gate::pass> try_enter_gate()
    {
        return gate_ ? gate_->try_enter() : std::optional<block::io_gate::pass>(std::in_place);
    }
    /// Name of the current node (query-block-exports' `node-name`).
    std::string node_name() const;

    bool writable() const noexcept { return opts_.writable; }

    /// Finds the bitmaps the options name, in QEMU 7.2's order and words (bitmaps.hpp:
    /// "Bitmap 'x' is not found", busy, "Enabled bitmap 'x' incompatible with readonly
    /// export"), then marks them all busy until `release`. On error none is marked.
    qapi::result<void> claim_bitmaps();
    /// The served bitmaps, in the order given (a name listed twice is served twice, as QEMU
    /// does); meta context ids follow this order.
    const std::vector<std::shared_ptr<block::named_bitmap>>& bitmaps() const noexcept { return bitmaps_; }
    /// After block-export-del / nbd-server-remove: no new clients, `shutting-down: true`.
    bool shutting_down() const noexcept { return shutting_down_; }

    // ---- clients (used by the NBD connection code) --------------------------------------------
    void attach(client* c);
    /// Removes `c`; when the export is shutting down and this was the last client, calls the
    /// idle callback (the manager then finishes the deletion).
    void detach(client* c);
    std::size_t clients() const noexcept { return clients_.size(); }
    /// Clients that have not hung up: what makes a safe block-export-del fail.
    std::size_t active_clients() const;

    // ---- lifecycle (used by the manager) -----------------------------------------------------
    /// Marks the export as going away; `on_idle` runs once no client is attached (possibly
    /// immediately, inside this call). `hard` closes every client first.
    void begin_shutdown(bool hard, std::function<void()> on_idle);
    /// Drops the edge to the node and lets its bitmaps go (no longer busy).
    void release();

private:
    export_options opts_;
    block::edge edge_;
    block::io_gate* gate_ = nullptr;
    std::vector<client*> clients_;
    std::vector<std::shared_ptr<block::named_bitmap>> bitmaps_;
    bool shutting_down_ = false;
    std::function<void()> on_idle_;
};

} // namespace bjd::exports
