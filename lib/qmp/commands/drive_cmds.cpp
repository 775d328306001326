// SPDX-License-Identifier: MIT
// Named drives and removable media: query-block, x-drive-add/x-drive-del, the tray and medium
// commands and DEVICE_TRAY_MOVED (QEMU 7.2 texts and event rules, QEMU's blockdev.c media commands). Glue over
// bjd/block/backend.hpp.
#include "bjd/block/backend.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/block/query.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qapi/events.hpp"
#include "bjd/qmp/context.hpp"

#include <boost/json/object.hpp>

#include <cstdio>
#include <cstring>

namespace bjd::qapi {

namespace {

using backend_ptr = std::shared_ptr<block::backend>;

void tray_moved(qmp::context& ctx, const block::backend& b, const block::tray_change& c)
{
    if (c.moved)
        emit_device_tray_moved(ctx.events, {b.name(), b.name(), c.open});
}

/// Closes `n` (and its inline children) when nothing holds it any more and the monitor did
/// not create it (media opened by blockdev-change-medium).
boost::asio::awaitable<void> drop_if_orphan(block::graph& g, std::shared_ptr<block::node> n)
{
    if (n && !n->monitor_owned())
        co_await g.close(std::move(n));
}

boost::asio::awaitable<result<void>> remove_medium(qmp::context& ctx, backend_ptr b)
{
    std::shared_ptr<block::node> old = b->medium_shared();
    if (auto r = b->remove_medium(); !r)
        co_return r;
    if (old && !b->medium())
        co_await drop_if_orphan(*ctx.graph, std::move(old));
    co_return result<void>{};
}

/// blockdev-change-medium after the new image was opened: it goes again, and `e` is the answer.
boost::asio::awaitable<result<void>> change_failed(qmp::context& ctx, std::shared_ptr<block::node> medium, error e)
{
    co_await drop_if_orphan(*ctx.graph, std::move(medium));
    co_return e;
}

result<void> insert_medium(qmp::context& ctx, const std::string& drive, const std::string& node_name)
{
    // QEMU looks the node up before the device.
    auto n = ctx.graph->find(node_name);
    if (!n)
        return generic("Node '" + node_name + "' not found");
    if (auto r = block::check_free_node(*n); !r)
        return r;
    auto b = ctx.graph->drives().get(std::nullopt, drive);
    if (!b)
        return b.error();
    return (*b)->insert_medium(std::move(n));
}

/// QEMU probes the format when none is given; blockjobd knows qcow2 and raw.
std::string probe_format(const std::string& filename)
{
    char magic[4] = {};
    if (FILE* f = std::fopen(filename.c_str(), "rb")) {
        std::size_t got = std::fread(magic, 1, sizeof magic, f);
        std::fclose(f);
        if (got == 4 && std::memcmp(magic, "QFI\xfb", 4) == 0)
            return "qcow2";
    }
    return "raw";
}

} // namespace

boost::asio::awaitable<result<std::vector<block_info>>> qmp_query_block(qmp::context& ctx)
{
    std::vector<block_info> out;
    for (const backend_ptr& b : ctx.graph->drives().all()) {
        block_info i;
        i.device = b->name();
        i.type = "unknown";
        i.removable = b->removable();
        i.locked = b->locked();
        if (b->has_tray())
            i.tray_open = b->tray_open();
        i.io_status = block_device_io_status::ok;
        if (const block::node* m = b->visible_medium())
            i.inserted = block::describe_node(*m, false);
        out.push_back(std::move(i));
    }
    co_return out;
}

boost::asio::awaitable<result<void>> qmp_x_drive_add(qmp::context& ctx, x_drive_add_args args)
{
    block::drive_options o;
    o.id = args.id;
    o.node_name = args.node_name.value_or("");
    o.removable = args.removable.value_or(false);
    o.tray = args.tray.value_or(false);
    o.tray_open = args.tray_open.value_or(false);
    o.locked = args.locked.value_or(false);
    if (args.stats_intervals) {
        for (std::int64_t v : *args.stats_intervals) {
            if (v <= 0 || v > std::int64_t(UINT32_MAX))
                co_return generic("Invalid interval length: " + std::to_string(v));
            o.stats_intervals.push_back(std::uint32_t(v));
        }
    }
    o.stats_account_invalid = args.stats_account_invalid.value_or(true);
    o.stats_account_failed = args.stats_account_failed.value_or(true);
    auto r = ctx.graph->drives().add(o);
    if (!r)
        co_return r.error();
    co_return result<void>{};
}

boost::asio::awaitable<result<void>> qmp_x_drive_del(qmp::context& ctx, x_drive_del_args args)
{
    auto b = ctx.graph->drives().find(args.id);
    std::shared_ptr<block::node> old = b ? b->medium_shared() : nullptr;
    b.reset();
    if (auto r = ctx.graph->drives().del(args.id); !r)
        co_return r;
    if (old)
        co_await drop_if_orphan(*ctx.graph, std::move(old));
    co_return result<void>{};
}

boost::asio::awaitable<result<void>> qmp_blockdev_open_tray(qmp::context& ctx, blockdev_open_tray_args args)
{
    auto b = ctx.graph->drives().get(args.device, args.id);
    if (!b)
        co_return b.error();
    auto c = (*b)->open_tray(args.force.value_or(false));
    if (!c)
        co_return c.error();
    tray_moved(ctx, **b, *c);
    co_return result<void>{};
}

boost::asio::awaitable<result<void>> qmp_blockdev_close_tray(qmp::context& ctx, blockdev_close_tray_args args)
{
    auto b = ctx.graph->drives().get(args.device, args.id);
    if (!b)
        co_return b.error();
    auto c = (*b)->close_tray();
    if (!c)
        co_return c.error();
    tray_moved(ctx, **b, *c);
    co_return result<void>{};
}

boost::asio::awaitable<result<void>> qmp_blockdev_remove_medium(qmp::context& ctx, blockdev_remove_medium_args args)
{
    auto b = ctx.graph->drives().get(std::nullopt, args.id);
    if (!b)
        co_return b.error();
    co_return co_await remove_medium(ctx, *b);
}

boost::asio::awaitable<result<void>> qmp_x_blockdev_remove_medium(qmp::context& ctx,
                                                                  x_blockdev_remove_medium_args args)
{
    auto b = ctx.graph->drives().get(args.device, std::nullopt);
    if (!b)
        co_return b.error();
    co_return co_await remove_medium(ctx, *b);
}

boost::asio::awaitable<result<void>> qmp_blockdev_insert_medium(qmp::context& ctx, blockdev_insert_medium_args args)
{
    co_return insert_medium(ctx, args.id, args.node_name);
}

boost::asio::awaitable<result<void>> qmp_x_blockdev_insert_medium(qmp::context& ctx,
                                                                  x_blockdev_insert_medium_args args)
{
    co_return insert_medium(ctx, args.device, args.node_name);
}

boost::asio::awaitable<result<void>> qmp_blockdev_change_medium(qmp::context& ctx, blockdev_change_medium_args args)
{
    auto got = ctx.graph->drives().get(args.device, args.id);
    if (!got)
        co_return got.error();
    backend_ptr b = *got;

    // 1. Open the new image; a failure changes nothing.
    bool read_only = b->medium() ? b->medium()->read_only() : b->read_only_state();
    switch (args.read_only_mode.value_or(blockdev_change_read_only_mode::retain)) {
    case blockdev_change_read_only_mode::retain: break;
    case blockdev_change_read_only_mode::read_only: read_only = true; break;
    case blockdev_change_read_only_mode::read_write: read_only = false; break;
    }
    std::string format = args.format.value_or(probe_format(args.filename));
    if (blockdev_driver d; !parse_enum(format, d))
        co_return generic("Unknown driver '" + format + "'");
    boost::json::object o{{"driver", format}, {"read-only", read_only}};
    if (format == "file")
        o["filename"] = args.filename;
    else
        o["file"] = boost::json::object{{"driver", "file"}, {"filename", args.filename}};
    auto opts = decode<blockdev_options>(o);
    if (!opts)
        co_return opts.error();
    auto opened = co_await ctx.graph->open(*opts, false);
    if (!opened)
        co_return opened.error();
    std::shared_ptr<block::node> medium = std::move(*opened);

    // 2. Open the tray (tray-less drives skip it), 3. remove, 4. insert, 5. close.
    bool no_tray = false;
    auto c = b->open_tray_checked(args.force.value_or(false), no_tray);
    if (!c)
        co_return co_await change_failed(ctx, std::move(medium), c.error());
    tray_moved(ctx, *b, *c);
    if (auto r = co_await remove_medium(ctx, b); !r)
        co_return co_await change_failed(ctx, std::move(medium), r.error());
    if (auto r = b->insert_medium(medium); !r)
        co_return co_await change_failed(ctx, std::move(medium), r.error());
    auto closed = b->close_tray();
    if (!closed)
        co_return closed.error();
    tray_moved(ctx, *b, *closed);
    co_return result<void>{};
}

boost::asio::awaitable<result<void>> qmp_eject(qmp::context& ctx, eject_args args)
{
    auto b = ctx.graph->drives().get(args.device, args.id);
    if (!b)
        co_return b.error();
    bool no_tray = false;
    auto c = (*b)->open_tray_checked(args.force.value_or(false), no_tray);
    if (!c)
        co_return c.error();
    tray_moved(ctx, **b, *c);
    co_return co_await remove_medium(ctx, *b);
}

} // namespace bjd::qapi
