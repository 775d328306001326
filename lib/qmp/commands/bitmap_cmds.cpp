// SPDX-License-Identifier: MIT
// Named dirty bitmaps: block-dirty-bitmap-add, -remove, -clear, -enable, -disable, -merge.
#include "bjd/block/bitmaps.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"
#include "bitmap_cmds.hpp"

namespace bjd::qapi {

boost::asio::awaitable<result<void>> qmp_block_dirty_bitmap_add(qmp::context& ctx, block_dirty_bitmap_add_args args)
{
    co_return block::bitmap_add(*ctx.graph, args.node, args.name, args.granularity, args.persistent.value_or(false),
                                args.disabled.value_or(false));
}

boost::asio::awaitable<result<void>> qmp_block_dirty_bitmap_remove(qmp::context& ctx,
                                                                  block_dirty_bitmap_remove_args args)
{
    // A persistent bitmap leaves the image too (QEMU's bdrv_co_remove_persistent_dirty_bitmap).
    std::shared_ptr<block::node> n;
    bool persistent = false;
    if (auto found = ctx.graph->lookup(args.node)) {
        n = *found;
        if (auto b = n->find_bitmap(args.name))
            persistent = b->persistent();
    }
    auto r = block::bitmap_remove(*ctx.graph, args.node, args.name);
    if (!r || !persistent)
        co_return r;
    co_return co_await n->remove_persistent_bitmap(args.name);
}

boost::asio::awaitable<result<void>> qmp_block_dirty_bitmap_clear(qmp::context& ctx, block_dirty_bitmap_clear_args args)
{
    co_return block::bitmap_clear(*ctx.graph, args.node, args.name);
}

boost::asio::awaitable<result<void>> qmp_block_dirty_bitmap_enable(qmp::context& ctx,
                                                                  block_dirty_bitmap_enable_args args)
{
    co_return block::bitmap_enable(*ctx.graph, args.node, args.name, true);
}

boost::asio::awaitable<result<void>> qmp_block_dirty_bitmap_disable(qmp::context& ctx,
                                                                   block_dirty_bitmap_disable_args args)
{
    co_return block::bitmap_enable(*ctx.graph, args.node, args.name, false);
}

std::vector<block::bitmap_ref> merge_sources(std::vector<block_dirty_bitmap_or_str>& bitmaps)
{
    std::vector<block::bitmap_ref> sources;
    for (auto& s : bitmaps) {
        if (auto* local = std::get_if<std::string>(&s))
            sources.push_back({std::nullopt, std::move(*local)});
        else {
            const auto& ext = *std::get<box<block_dirty_bitmap>>(s);
            sources.push_back({ext.node, ext.name});
        }
    }
    return sources;
}

boost::asio::awaitable<result<void>> qmp_block_dirty_bitmap_merge(qmp::context& ctx, block_dirty_bitmap_merge_args args)
{
    co_return block::bitmap_merge(*ctx.graph, args.node, args.target, merge_sources(args.bitmaps));
}

} // namespace bjd::qapi
