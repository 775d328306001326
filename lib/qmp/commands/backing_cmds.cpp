// SPDX-License-Identifier: MIT
// change-backing-file (QEMU's blockdev.c, qmp_change_backing_file): QEMU 7.2's checks, in its order and with its texts; the
// header rewrite itself is lib/block's (bjd/block/create.hpp).
#include "bjd/block/create.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"

#include <algorithm>

namespace bjd::qapi {

namespace {

/// QEMU's bdrv_is_root_node as change-backing-file sees it: no node above. (A job's
/// reference is a BlockBackend in QEMU, so a job's node is still a root: the op blocker
/// then reports it busy.)
bool is_root(const block::node& n)
{
    return std::none_of(n.parents().begin(), n.parents().end(),
                        [](const block::edge* e) { return e->kind() == block::parent_kind::node; });
}

bool is_filter(const block::node& n) { return n.driver() == "mirror_top"; }

/// The next node down the chain: the filtered child of a filter, else the backing node.
block::node* chain_next(const block::node& n)
{
    return is_filter(n) ? n.primary_child() : n.backing();
}

/// The format the backing node really has, for the backing-format header extension
/// (deliberate difference: QEMU writes the image's own format). Filters are skipped; a
/// protocol node is read as raw.
std::string real_backing_format(const block::node& image)
{
    const block::node* b = image.backing();
    while (b && is_filter(*b))
        b = b->primary_child();
    if (!b)
        return {};
    if (b->driver() == "file")
        return "raw";
    return std::string(b->driver());
}

} // namespace

boost::asio::awaitable<result<void>> qmp_change_backing_file(qmp::context& ctx, change_backing_file_args args)
{
    block::graph& g = *ctx.graph;
    auto dev = g.lookup(args.device);
    if (!dev)
        co_return dev.error();
    block::node& root = **dev;
    if (!is_root(root))
        co_return generic("Need a root block node");

    auto image = g.find(args.image_node_name);
    if (!image)
        co_return generic("Cannot find device='' nor node-name='" + args.image_node_name + "'");
    if (!image->backing())
        co_return generic("not allowing backing file change on an image without a backing file");
    if (auto r = root.check_op(block::block_op::other, g.drives().find(args.device) ? args.device : root.name()); !r)
        co_return r.error();
    const block::node* n = &root;
    while (n && n != image.get())
        n = chain_next(*n);
    if (!n)
        co_return generic("'" + args.device + "' and image file are not in the same chain");

    auto r = co_await block::qcow2_change_backing_file(*image, args.backing_file, real_backing_format(*image));
    if (!r)
        co_return generic("Could not change backing file to '" + args.backing_file + "': " + strerror_text(r.error()));
    co_return result<void>{};
}

} // namespace bjd::qapi
