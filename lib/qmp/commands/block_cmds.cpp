// SPDX-License-Identifier: MIT
// Block node commands: blockdev-add, blockdev-reopen, blockdev-del, block_resize, query-named-block-nodes,
// block-set-write-threshold.
#include "bjd/block/graph.hpp"
#include "bjd/block/query.hpp"
#include "bjd/block/reopen.hpp"
#include "bjd/block/resize.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qapi/events.hpp"
#include "bjd/qmp/context.hpp"
#include "bjd/qmp/state_dir.hpp"

namespace bjd::qapi {

boost::asio::awaitable<result<void>> qmp_blockdev_add(qmp::context& ctx, blockdev_options args)
{
    auto r = co_await ctx.graph->add(args);
    if (!r)
        co_return r.error();
    // --state-dir: what the node was added with, to add it again for a job that needs it.
    if (ctx.state)
        ctx.state->remember_node((*r)->name(), to_json(args).as_object());
    co_return result<void>{};
}

boost::asio::awaitable<result<void>> qmp_blockdev_reopen(qmp::context& ctx, blockdev_reopen_args args)
{
    co_return co_await block::reopen_nodes(*ctx.graph, args.options);
}

boost::asio::awaitable<result<void>> qmp_blockdev_del(qmp::context& ctx, blockdev_del_args args)
{
    std::string name = args.node_name;
    auto r = co_await ctx.graph->del(std::move(args.node_name));
    if (r && ctx.state)
        ctx.state->forget_node(name);
    co_return r;
}

boost::asio::awaitable<result<void>> qmp_block_resize(qmp::context& ctx, block_resize_args args)
{
    co_return co_await block::resize(*ctx.graph, args.device, args.node_name, args.size);
}

boost::asio::awaitable<result<std::vector<block_device_info>>> qmp_query_named_block_nodes(
    qmp::context& ctx, query_named_block_nodes_args args)
{
    std::vector<block_device_info> out;
    bool flat = args.flat.value_or(false);
    for (const auto& n : ctx.graph->nodes())
        out.push_back(block::describe_node(*n, flat));
    co_return out;
}

boost::asio::awaitable<result<void>> qmp_block_set_write_threshold(qmp::context& ctx,
                                                                  block_set_write_threshold_args args)
{
    // QEMU's bdrv_find_node: node names only, and its message says "Device".
    auto n = ctx.graph->find(args.node_name);
    if (!n)
        co_return generic("Device '" + args.node_name + "' not found");
    // The node fires (and disarms) on its own data path; the event goes to every session.
    n->set_write_threshold(args.write_threshold,
                           [&events = ctx.events](const block::node& node, std::uint64_t amount, std::uint64_t threshold) {
                               emit_block_write_threshold(events, {.node_name = node.name(),
                                                                   .amount_exceeded = amount,
                                                                   .write_threshold = threshold});
                           });
    co_return result<void>{};
}

} // namespace bjd::qapi
