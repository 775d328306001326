// SPDX-License-Identifier: MIT
// blockdev-backup and drive-backup. Glue only: the checks and their texts live in lib/jobs.
#include "backup_cmds.hpp"

#include "bjd/jobs/backup.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"

namespace bjd::qapi {

namespace {

/// The members every backup command and transaction action shares (QEMU's BackupCommon).
template <class Args>
jobs::backup_params common_params(Args& args)
{
    return {.job_id = std::move(args.job_id),
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
}

} // namespace

jobs::backup_params backup_params_of(blockdev_backup& args)
{
    return common_params(args);
}

jobs::drive_backup_params drive_backup_params_of(drive_backup& args)
{
    jobs::drive_backup_params p;
    p.target = args.target;
    p.format = std::move(args.format);
    p.mode = args.mode.value_or(new_image_mode::absolute_paths);
    p.backup = common_params(args);
    return p;
}

boost::asio::awaitable<result<void>> qmp_blockdev_backup(qmp::context& ctx, blockdev_backup_args args)
{
    // A named object: GCC 12 destroys temporaries of a co_await's full expression too early.
    const jobs::backup_params p = common_params(args);
    co_return co_await jobs::start_backup(*ctx.jobs, *ctx.graph, p);
}

boost::asio::awaitable<result<void>> qmp_drive_backup(qmp::context& ctx, drive_backup args)
{
    const jobs::drive_backup_params p = drive_backup_params_of(args);
    co_return co_await jobs::start_drive_backup(*ctx.jobs, *ctx.graph, p);
}

} // namespace bjd::qapi
