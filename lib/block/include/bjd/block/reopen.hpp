// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Switching nodes between read-only and read-write while they are in use (QEMU's
/// bdrv_reopen_set_read_only). Main loop only.
#include "bjd/block/node.hpp"
#include "bjd/qapi/error.hpp"

#include <boost/asio/awaitable.hpp>

namespace bjd::block {

/// Makes `n` read-only (or read-write), with the nodes under it that inherit its options:
/// its file children and a filter's child, but not a backing chain, which stays read-only
/// (QEMU's child option inheritance). Going read-only flushes each node first, so a qcow2
/// node's cached metadata reaches its file, and a file node reopens its file read-only;
/// going read-write reopens it read-write. Fails, changing nothing, when a user still
/// writes the node ("Block node is read-only") or the file cannot be reopened ("Could not
/// open 'F': …"). No-op when the node already is as asked.
asio::awaitable<qapi::result<void>> reopen_read_only(node& n, bool read_only);

} // namespace bjd::block
