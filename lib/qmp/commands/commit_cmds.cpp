// SPDX-License-Identifier: MIT
// block-commit. Glue only: the checks and their texts live in lib/jobs.
#include "bjd/jobs/commit.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"

namespace bjd::qapi {

boost::asio::awaitable<result<void>> qmp_block_commit(qmp::context& ctx, block_commit_args args)
{
    // A named object: GCC 12 destroys temporaries of a co_await's full expression too early.
    const jobs::commit_params p{.job_id = std::move(args.job_id),
                                .device = std::move(args.device),
                                .base = std::move(args.base),
                                .base_node = std::move(args.base_node),
                                .top = std::move(args.top),
                                .top_node = std::move(args.top_node),
                                .backing_file = std::move(args.backing_file),
                                .speed = args.speed.value_or(0),
                                .on_error = args.on_error.value_or(blockdev_on_error::report),
                                .filter_node_name = std::move(args.filter_node_name),
                                .auto_finalize = args.auto_finalize.value_or(true),
                                .auto_dismiss = args.auto_dismiss.value_or(true)};
    co_return co_await jobs::start_commit(*ctx.jobs, *ctx.graph, p);
}

} // namespace bjd::qapi
