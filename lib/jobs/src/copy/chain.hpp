// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Walking a backing chain as QEMU's stream and commit jobs do (block.c bdrv_filter_or_cow_bs,
/// bdrv_chain_contains, bdrv_find_backing_image, bdrv_is_allocated_above).
#include "bjd/block/node.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace bjd::jobs::detail {

/// The next node down the chain: a filter's child, a format's COW backing.
block::node* chain_next(const block::node& n);

/// The file name an image header should carry for `n`: its file's name, made absolute.
std::string image_path(const block::node& n);

/// Whether `n` is `top` or below it.
bool chain_contains(const block::node& top, const block::node* n);

/// The node below `top` whose file is `name` (compared as given and as a real path).
std::shared_ptr<block::node> find_backing_image(const block::node& top, const std::string& name);

/// Whether a node from `first` down to, but not including, `stop` (null: the end of the
/// chain) holds data for [offset, offset+n), and for how many bytes from `offset` that
/// answer holds. Filters are passed through; a node shorter than `offset` ends the walk.
boost::asio::awaitable<result<std::pair<bool, std::uint64_t>>> allocated_between(block::node* first, const block::node* stop,
                                                                           std::uint64_t offset, std::uint64_t n);

} // namespace bjd::jobs::detail
