// SPDX-License-Identifier: MIT
// Mirror commands: blockdev-mirror, drive-mirror, block-job-change. Glue: defaults and checks
// live in lib/jobs (bjd/jobs/mirror.hpp).
#include "bjd/block/graph.hpp"
#include "bjd/jobs/job.hpp"
#include "bjd/jobs/mirror.hpp"
#include "bjd/log.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"
#include "bjd/qmp/state_dir.hpp"
#include "mirror_cmds.hpp"

namespace bjd::qapi {

jobs::mirror_params blockdev_mirror_params_of(const blockdev_mirror_args& args)
{
    jobs::mirror_params p;
    p.job_id = args.job_id;
    p.device = args.device;
    p.target = args.target;
    p.replaces = args.replaces;
    p.sync = args.sync;
    p.speed = args.speed.value_or(0);
    p.granularity = args.granularity.value_or(0);
    p.buf_size = args.buf_size.value_or(0);
    p.on_source_error = args.on_source_error.value_or(blockdev_on_error::report);
    p.on_target_error = args.on_target_error.value_or(blockdev_on_error::report);
    p.filter_node_name = args.filter_node_name;
    p.copy_mode = args.copy_mode.value_or(mirror_copy_mode::background);
    p.auto_finalize = args.auto_finalize.value_or(true);
    p.auto_dismiss = args.auto_dismiss.value_or(true);
    p.target_is_zero = args.target_is_zero.value_or(false);
    return p;
}

boost::asio::awaitable<result<void>> qmp_blockdev_mirror(qmp::context& ctx, blockdev_mirror_args args)
{
    auto r = co_await jobs::co_start_mirror(*ctx.jobs, *ctx.graph, blockdev_mirror_params_of(args));
    // --state-dir: the job's definition, kept until it ends (jobs without an id cannot be
    // found again, and are not kept).
    if (r && ctx.state && args.job_id)
        ctx.state->job_started(ctx, *args.job_id, "blockdev-mirror", to_json(args).as_object());
    co_return r;
}

boost::asio::awaitable<result<void>> qmp_drive_mirror(qmp::context& ctx, drive_mirror args)
{
    jobs::mirror_params p;
    p.drive = true;
    p.job_id = args.job_id;
    p.device = args.device;
    p.target = args.target;
    p.format = args.format;
    p.node_name = args.node_name;
    p.replaces = args.replaces;
    p.sync = args.sync;
    p.mode = args.mode.value_or(new_image_mode::absolute_paths);
    p.speed = args.speed.value_or(0);
    p.granularity = args.granularity.value_or(0);
    p.buf_size = args.buf_size.value_or(0);
    p.on_source_error = args.on_source_error.value_or(blockdev_on_error::report);
    p.on_target_error = args.on_target_error.value_or(blockdev_on_error::report);
    p.unmap = args.unmap.value_or(true);
    p.copy_mode = args.copy_mode.value_or(mirror_copy_mode::background);
    p.auto_finalize = args.auto_finalize.value_or(true);
    p.auto_dismiss = args.auto_dismiss.value_or(true);
    auto r = co_await jobs::co_start_mirror(*ctx.jobs, *ctx.graph, p);
    // --state-dir keeps blockdev-mirror only (docs/job-state.md, "Not yet"): say so.
    if (r && ctx.state && args.job_id)
        log::get("state")->warn("job '{}' is not kept in the state directory: drive-mirror jobs are not (use "
                                "blockdev-add and blockdev-mirror)",
                                *args.job_id);
    co_return r;
}

boost::asio::awaitable<result<void>> qmp_block_job_change(qmp::context& ctx, block_job_change_options args)
{
    auto j = ctx.jobs->lookup_block_job(args.id);
    if (!j)
        co_return j.error();
    co_return (*j)->change(args);
}

} // namespace bjd::qapi
