// SPDX-License-Identifier: MIT
#pragma once
// What block-dirty-bitmap-merge and the transaction's merge action both need.
#include "bjd/block/bitmaps.hpp"
#include "bjd/qapi/commands.hpp"

#include <vector>

namespace bjd::qapi {

/// The merge sources as the block layer takes them (moved out of `bitmaps`).
std::vector<block::bitmap_ref> merge_sources(std::vector<block_dirty_bitmap_or_str>& bitmaps);

} // namespace bjd::qapi
