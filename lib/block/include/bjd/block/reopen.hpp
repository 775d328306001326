// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Switching nodes between read-only and read-write while they are in use (QEMU's
/// bdrv_reopen_set_read_only). Main loop only.
#include "bjd/block/node.hpp"
#include "bjd/qapi/error.hpp"
#include "bjd/qapi/types.hpp"

#include <boost/asio/awaitable.hpp>

namespace bjd::block {

/// Makes `n` read-only (or read-write), with the nodes under it that inherit its options:
/// its file children and a filter's child opened with it, but not a backing chain, which
/// stays read-only, nor nodes added on their own by blockdev-add (QEMU's child option
/// inheritance, inherits_from). Going read-only flushes each node first, so a qcow2
/// node's cached metadata reaches its file, and a file node reopens its file read-only;
/// going read-write reopens it read-write. Fails, changing nothing, when a user still
/// writes the node ("Block node is read-only") or the file cannot be reopened ("Could not
/// open 'F': …"). No-op when the node already is as asked.
asio::awaitable<qapi::result<void>> reopen_read_only(node& n, bool read_only);

class graph;

/// blockdev-reopen (QEMU's qmp_blockdev_reopen): each entry gives the whole new option set of
/// an existing node, as blockdev-add would; options left out take their defaults. What can
/// change: read-only (as reopen_read_only: nodes added on their own keep theirs, as in QEMU),
/// detect-zeroes, discard, and a qcow2 node's backing link (another node, or null for none;
/// the image header is not rewritten). What cannot: the driver, a file node's filename, the
/// cache mode, and which node is the `file` child (QEMU 7.2 can swap it; blockjobd says it
/// cannot). Every entry is checked before any is applied; when applying fails, the entries
/// applied before are put back. An empty list changes nothing (QEMU 7.2 aborts on it).
asio::awaitable<qapi::result<void>> reopen_nodes(graph& g, const std::vector<qapi::blockdev_options>& list);

} // namespace bjd::block
