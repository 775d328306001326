// SPDX-License-Identifier: MIT
// Block export commands: nbd-server-start/stop, block-export-add/del, nbd-server-add/remove,
// query-block-exports. Glue over bjd::exports::manager (lib/export).
#include "bjd/block/graph.hpp"
#include "bjd/export/manager.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"
#include "bjd/qmp/exports.hpp"

namespace bjd::qapi {

namespace {

/// QEMU 7.2's SocketAddress → our listen address; refuses what blockjobd cannot do.
result<exports::listen_address> to_listen_address(const socket_address& a)
{
    exports::listen_address out;
    switch (a.type) {
    case socket_address_type::unix: {
        const auto& u = *a.u.unix;
        if (u.abstract.value_or(false))
            return generic("Abstract unix sockets are not supported by blockjobd");
        out.type = exports::listen_address::kind::unix_socket;
        out.path = u.path;
        return out;
    }
    case socket_address_type::inet: {
        const auto& i = *a.u.inet;
        if (i.to)
            return generic("Port ranges ('to') are not supported by blockjobd");
        if (i.mptcp.value_or(false))
            return generic("MPTCP is not supported by blockjobd");
        out.type = exports::listen_address::kind::inet;
        out.host = i.host;
        out.port = i.port;
        return out;
    }
    case socket_address_type::vsock:
        return generic("vsock addresses are not supported by blockjobd");
    case socket_address_type::fd:
        // Sockets systemd passed (by FileDescriptorName= or number); there is no getfd.
        try {
            out.type = exports::listen_address::kind::fd;
            out.fd = net::inherited_fd(a.u.fd->str);
        } catch (const std::system_error& e) {
            return generic(e.what());
        }
        return out;
    }
    return generic("unsupported address type");
}

/// nbd-server-start's SocketAddressLegacy (members under "data") → the flat SocketAddress, as
/// QEMU's socket_address_flatten.
socket_address flatten(socket_address_legacy a)
{
    socket_address out;
    out.type = a.type;
    if (a.u.inet)
        out.u.inet = std::move(a.u.inet->data);
    if (a.u.unix)
        out.u.unix = std::move(a.u.unix->data);
    if (a.u.vsock)
        out.u.vsock = std::move(a.u.vsock->data);
    if (a.u.fd)
        out.u.fd = std::move(a.u.fd->data);
    return out;
}

result<void> not_running_if_absent(qmp::context& ctx)
{
    if (!ctx.exports || !ctx.exports->server_running())
        return generic("NBD server not running");
    return {};
}

} // namespace

} // namespace bjd::qapi

namespace bjd::qmp {

qapi::result<void> start_nbd_server(context& ctx, const qapi::nbd_server_options& o)
{
    if (!ctx.exports)
        return qapi::generic("NBD exports are not available");
    if (ctx.exports->server_running())
        return qapi::generic("NBD server already running");
    auto addr = qapi::to_listen_address(o.addr);
    if (!addr)
        return addr.error();
    exports::nbd_server_options so;
    so.addr = std::move(*addr);
    so.tls_creds = o.tls_creds;
    so.tls_authz = o.tls_authz;
    so.max_connections = o.max_connections.value_or(0);
    return ctx.exports->start_server(so);
}

} // namespace bjd::qmp

namespace bjd::qapi {

boost::asio::awaitable<result<void>> qmp_nbd_server_start(qmp::context& ctx, nbd_server_start_args args)
{
    nbd_server_options o{flatten(std::move(args.addr)), std::move(args.tls_creds), std::move(args.tls_authz),
                         args.max_connections};
    co_return qmp::start_nbd_server(ctx, o);
}

boost::asio::awaitable<result<void>> qmp_nbd_server_stop(qmp::context& ctx)
{
    if (auto r = not_running_if_absent(ctx); !r)
        co_return r;
    co_return co_await ctx.exports->stop_server_and_wait();
}

boost::asio::awaitable<result<void>> qmp_block_export_add(qmp::context& ctx, block_export_options args)
{
    if (args.type != block_export_type::nbd)
        co_return generic("No driver found for the requested export type");
    if (!ctx.exports)
        co_return generic("NBD server not running");
    if (auto r = ctx.exports->check_new_id(args.id); !r)
        co_return r;
    // A drive's name serves the drive, following its medium (bjd/block/backend.hpp).
    std::shared_ptr<block::node> n;
    if (auto d = ctx.graph->drives().find(args.node_name))
        n = d->front();
    else
        n = ctx.graph->find(args.node_name);
    if (!n)
        co_return generic("Cannot find device='' nor node-name='" + args.node_name + "'");
    if (args.iothread)
        co_return generic("iothread \"" + *args.iothread + "\" not found");
    exports::export_options o;
    o.id = args.id;
    o.node_name = args.node_name;
    if (args.u.nbd) {
        o.name = args.u.nbd->name.value_or("");
        o.description = args.u.nbd->description;
        for (auto& b : args.u.nbd->bitmaps.value_or(std::vector<block_dirty_bitmap_or_str>{})) {
            if (auto* local = std::get_if<std::string>(&b)) {
                o.bitmaps.emplace_back().name = std::move(*local);
            } else {
                const auto& ext = *std::get<box<block_dirty_bitmap>>(b);
                auto node = ctx.graph->lookup(ext.node);
                o.bitmaps.push_back({.name = ext.name, .node = node ? *node : nullptr, .node_ref = ext.node});
            }
        }
    }
    o.writable = args.writable.value_or(false);
    o.writethrough = args.writethrough.value_or(false);
    co_return ctx.exports->add(std::move(o), std::move(n));
}

boost::asio::awaitable<result<void>> qmp_block_export_del(qmp::context& ctx, block_export_del_args args)
{
    if (!ctx.exports)
        co_return generic("Export '" + args.id + "' is not found");
    bool hard = args.mode.value_or(block_export_remove_mode::safe) == block_export_remove_mode::hard;
    co_return co_await ctx.exports->remove(args.id, hard);
}

boost::asio::awaitable<result<void>> qmp_nbd_server_add(qmp::context& ctx, nbd_server_add_options args)
{
    if (auto r = not_running_if_absent(ctx); !r)
        co_return r;
    std::string name = args.name.value_or(args.device);
    if (auto r = ctx.exports->check_new_id(name); !r)
        co_return r;
    qapi::result<std::shared_ptr<block::node>> n = generic("");
    if (auto d = ctx.graph->drives().find(args.device))
        n = d->front();   // a drive: follow its medium
    else
        n = ctx.graph->lookup(args.device);
    if (!n)
        co_return n.error();
    exports::export_options o;
    o.id = name;
    o.node_name = args.device;
    o.name = name;
    o.description = args.description;
    o.writable = args.writable.value_or(false);
    if (args.bitmap)
        o.bitmaps.emplace_back().name = *args.bitmap;
    co_return ctx.exports->add(std::move(o), std::move(*n));
}

boost::asio::awaitable<result<void>> qmp_nbd_server_remove(qmp::context& ctx, nbd_server_remove_args args)
{
    // QEMU 7.2 does not check that the server runs: the lookup by id fails instead.
    if (!ctx.exports)
        co_return generic("Export '" + args.name + "' is not found");
    bool hard = args.mode.value_or(block_export_remove_mode::safe) == block_export_remove_mode::hard;
    co_return co_await ctx.exports->remove(args.name, hard);
}

boost::asio::awaitable<result<std::vector<block_export_info>>> qmp_query_block_exports(qmp::context& ctx)
{
    std::vector<block_export_info> out;
    if (!ctx.exports)
        co_return out;
    for (auto& e : ctx.exports->query())
        out.push_back({e.id, block_export_type::nbd, e.node_name, e.shutting_down});
    co_return out;
}

} // namespace bjd::qapi
