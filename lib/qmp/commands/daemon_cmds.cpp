// SPDX-License-Identifier: MIT
// blockjobd's own commands about the daemon itself.
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"

namespace bjd::qapi {

boost::asio::awaitable<result<io_engine_info>> qmp_query_io_engine(qmp::context& ctx)
{
    io_engine_info info;
    info.backend = ctx.io.backend == "io_uring" ? io_backend::io_uring : io_backend::threads;
    info.io_uring_available = ctx.io.fallback_reason.empty() && ctx.io.backend == "io_uring";
    if (!ctx.io.fallback_reason.empty())
        info.fallback_reason = ctx.io.fallback_reason;
    info.huge_pages = ctx.io.huge_pages;
    co_return info;
}

} // namespace bjd::qapi
