// SPDX-License-Identifier: MIT
// blockdev-backup. Glue only: the checks and their texts live in lib/jobs.
#include "bjd/jobs/backup.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"

namespace bjd::qapi {

boost::asio::awaitable<result<void>> qmp_blockdev_backup(qmp::context& ctx, blockdev_backup_args args)
{
    // A named object: GCC 12 destroys temporaries of a co_await's full expression too early.
    jobs::backup_params p{.job_id = std::move(args.job_id),
                          .device = std::move(args.device),
                          .target = std::move(args.target),
                          .sync = args.sync,
                          .speed = args.speed.value_or(0),
                          .bitmap = std::move(args.bitmap),
                          .bitmap_mode = args.bitmap_mode,
                          .compress = args.compress.value_or(false),
                          .on_source_error = args.on_source_error.value_or(blockdev_on_error::report),
                          .on_target_error = args.on_target_error.value_or(blockdev_on_error::report),
                          .filter_node_name = std::move(args.filter_node_name),
                          .auto_finalize = args.auto_finalize.value_or(true),
                          .auto_dismiss = args.auto_dismiss.value_or(true),
                          .max_workers = args.x_perf ? args.x_perf->max_workers : std::nullopt,
                          .max_chunk = args.x_perf ? args.x_perf->max_chunk : std::nullopt};
    co_return co_await jobs::start_backup(*ctx.jobs, *ctx.graph, p);
}

} // namespace bjd::qapi
