// SPDX-License-Identifier: MIT
// Control commands: qmp_capabilities, query-version, query-commands, quit.
// (query-qmp-schema is answered by the generated wrapper from qapi::qmp_schema().)
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"
#include "bjd/qmp/session.hpp"
#include "bjd/qmp/version.hpp"

#include <boost/asio/post.hpp>

namespace bjd::qapi {

boost::asio::awaitable<result<void>> qmp_qmp_capabilities(qmp::context& ctx, qmp_capabilities_args args)
{
    qmp::session* s = ctx.current;
    if (!s || s->state().command_mode) {
        co_return error{error_class::command_not_found,
                        "Capabilities negotiation is already complete, command ignored", {}};
    }
    bool oob = false;
    if (args.enable) {
        for (qmp_capability cap : *args.enable) {
            if (cap == qmp_capability::oob && !s->state().oob_offered) {
                co_return generic("Capability " + std::string(to_string(cap)) + " not available");
            }
            oob = oob || cap == qmp_capability::oob;
        }
    }
    s->state().oob_enabled = oob;
    s->state().command_mode = true;
    co_return result<void>{};
}

boost::asio::awaitable<result<version_info>> qmp_query_version(qmp::context& ctx)
{
    version_info v;
    v.qemu.major = qmp::qemu_version_major;
    v.qemu.minor = qmp::qemu_version_minor;
    v.qemu.micro = qmp::qemu_version_micro;
    v.package = qmp::package_string();
    co_return v;
}

boost::asio::awaitable<result<std::vector<command_info>>> qmp_query_commands(qmp::context& ctx)
{
    std::vector<command_info> out;
    for (const command_def& c : command_table()) {
        out.push_back(command_info{std::string(c.name)});
    }
    co_return out;
}

boost::asio::awaitable<result<void>> qmp_quit(qmp::context& ctx)
{
    if (ctx.prepare_quit) {
        co_await ctx.prepare_quit();
    }
    // Posted, so that this command's response is queued before the daemon starts shutting
    // down (server::shutdown flushes it).
    qmp::context* c = &ctx;
    boost::asio::post(ctx.loop, [c] {
        if (c->request_quit) {
            c->request_quit();
        }
    });
    co_return result<void>{};
}

} // namespace bjd::qapi
