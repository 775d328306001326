// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// External snapshots: an overlay qcow2 node takes the place of a node in use, with the node
/// as its backing image (blockdev-snapshot, blockdev-snapshot-sync). Main loop only.
#include "bjd/block/graph.hpp"
#include "bjd/block/transaction.hpp"
#include "bjd/qapi/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <memory>
#include <optional>
#include <string>

namespace bjd::block {

/// blockdev-snapshot: `node` (a drive or a node-name) becomes the backing image of the qcow2
/// node `overlay`, every user of `node` except the overlay and jobs moves to the overlay in
/// one checked change (QEMU's bdrv_append), and `node` is reopened read-only. The overlay's
/// header is left as it is. Errors, in QEMU 7.2's order: the lookups, "Node 'X' is busy:
/// …", "An IO error has occurred" (the flush of `node`), "The overlay is already in use",
/// "Filters cannot be used as overlays", "The overlay already has a backing image", "The
/// overlay does not support backing images", a permission conflict. On error the graph is
/// as it was.
asio::awaitable<qapi::result<void>> snapshot(graph& g, const std::string& node, const std::string& overlay);

/// What blockdev-snapshot-sync is given.
struct snapshot_sync_params {
    std::optional<std::string> device;
    std::optional<std::string> node_name;
    std::string file;                          ///< the overlay's image file
    std::optional<std::string> overlay_name;   ///< default: an automatic name
    std::string format = "qcow2";
    bool existing = false;                     ///< open `file` as it is instead of creating it
};

/// blockdev-snapshot-sync: creates the overlay image (unless `existing`) with the node's file
/// name and format as its backing file, opens it with the node's open flags (read-only,
/// cache, discard) and appends it as `snapshot` does. The overlay is closed once its last
/// user lets it go (it is not monitor-owned). Errors in QEMU 7.2's order (schemas/snapshot.json).
asio::awaitable<qapi::result<void>> snapshot_sync(graph& g, const snapshot_sync_params& p);

/// The two as actions of a `transaction` (transaction.hpp): prepare appends the overlay,
/// abort puts the old node back (and closes an overlay blockdev-snapshot-sync opened),
/// commit makes the old node read-only.
std::unique_ptr<transaction_action> snapshot_action(graph& g, std::string node, std::string overlay);
std::unique_ptr<transaction_action> snapshot_sync_action(graph& g, snapshot_sync_params p);

} // namespace bjd::block
