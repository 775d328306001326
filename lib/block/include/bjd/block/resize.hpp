// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// block_resize: changing the size of a node while it is in use. Main loop only.
#include "bjd/block/graph.hpp"
#include "bjd/qapi/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace bjd::block {

/// Resizes the medium of drive `device`, or else node `node_name`, to `size` bytes. Like QEMU
/// 7.2's qmp_block_resize, it takes the resize permission for the duration as an anonymous
/// user, so that users who do not share resizing (exports, a format over its file, a
/// mirror) refuse it with QEMU's texts, and so do other processes through the image locks.
/// Errors, in QEMU's order: "Cannot find device='' nor node-name='x'", "Device 'd' has no
/// medium", "Parameter 'size' expects a >0 size", "Device 'x' is in use" (a job's node; QEMU
/// 7.2 names the device only, "(null)" for a node-name), a permission conflict,
/// "offset(N) exceeds maximum(M)" (the block layer's limit), "Image is read-only", "Image
/// format driver does not support resize", then the driver's own (`node::resize`).
asio::awaitable<qapi::result<void>> resize(graph& g, const std::optional<std::string>& device,
                                           const std::optional<std::string>& node_name, std::int64_t size);

} // namespace bjd::block
