// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Block drivers, implementer side.
///
/// A driver is a subclass of `bjd::block::node` that implements the protected `do_*` hooks.
/// The node wrappers have already checked the request (range, read-only, open) and apply the
/// common policies (discard=ignore, detect-zeroes, write-zeroes emulation) before a hook runs,
/// and tell write observers afterwards. Hooks run on the main loop.
///
/// Capabilities are declared by what the hooks return: ENOTSUP from `do_write_zeroes` makes the
/// layer write zero buffers (unless the caller asked for no fallback); ENOTSUP from
/// `do_discard` makes discard a successful no-op.
#include "bjd/block/node.hpp"
#include "bjd/io/engine.hpp"
#include "bjd/qapi/error.hpp"

#include <memory>
#include <string>

namespace bjd::block {

/// file: a host file or block device.
struct file_open_options {
    std::string filename;
    bool use_uring = true;        ///< aio=io_uring (else the thread-pool engine)
    bool locking = true;          ///< locking=on|auto: OFD byte locks compatible with QEMU
};

/// Opens a file node. Errors: "Could not open 'F': <strerror>", "Failed to get \"write\" lock",
/// "Failed to get shared \"write\" lock" (another process, QEMU included, holds the image).
qapi::result<std::shared_ptr<node>> open_file(node_options common, const file_open_options& fo, io::engine& engine);

/// raw: a window [offset, offset+size) of its `file` child.
qapi::result<std::shared_ptr<node>> open_raw(node_options common, std::shared_ptr<node> file,
                                            std::uint64_t offset, std::optional<std::uint64_t> size);

/// null-co / null-aio: discards writes; reads return zeroes. `latency_ns` delays every request.
std::shared_ptr<node> open_null(node_options common, std::string_view driver, std::uint64_t size,
                                std::uint64_t latency_ns, bool read_zeroes);

} // namespace bjd::block
