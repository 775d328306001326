// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// What query-named-block-nodes and friends say about a node, in the schema's types.
#include "bjd/block/node.hpp"
#include "bjd/qapi/types.hpp"

namespace bjd::block {

/// The options describing `n` as an object: its json_options(), {driver, file: {…}} for a
/// node over a "file" child, or {driver, filename}.
boost::json::object options_json(const node& n);

/// What QEMU shows as a node's file name: the plain name, or "json:{…}" built from
/// `json_options()` (keys sorted, QEMU's ", " and ": " separators).
std::string display_filename(const node& n);

/// BlockDeviceInfo for `n`. With `flat == false`, `image.backing-image` is filled in down the
/// backing chain (QEMU's default for query-named-block-nodes).
qapi::block_device_info describe_node(const node& n, bool flat);

/// ImageInfo for `n` (format = driver name, virtual size, allocation, cluster size, backing).
qapi::image_info describe_image(const node& n, bool with_backing_chain);

} // namespace bjd::block
