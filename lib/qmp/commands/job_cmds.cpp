// SPDX-License-Identifier: MIT
// Job commands: query-jobs, query-block-jobs, job-* and block-job-* verbs (QEMU's qapi/job.json).
// Glue only: the checks and their texts live in lib/jobs.
#include "bjd/jobs/job.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"

namespace bjd::qapi {

namespace {

using job_ptr = std::shared_ptr<jobs::job>;

/// job-*: unknown id is GenericError "Job not found".
result<job_ptr> find_job(qmp::context& ctx, const std::string& id)
{
    return ctx.jobs->lookup(id);
}

/// block-job-*: unknown id is DeviceNotActive "Block job 'X' not found".
result<job_ptr> find_block_job(qmp::context& ctx, const std::string& id)
{
    return ctx.jobs->lookup_block_job(id);
}

} // namespace

boost::asio::awaitable<result<std::vector<job_info>>> qmp_query_jobs(qmp::context& ctx)
{
    std::vector<job_info> out;
    for (const auto& j : ctx.jobs->list())
        out.push_back(j->info());
    co_return out;
}

boost::asio::awaitable<result<std::vector<block_job_info>>> qmp_query_block_jobs(qmp::context& ctx)
{
    std::vector<block_job_info> out;
    for (const auto& j : ctx.jobs->list())
        if (j->block_job())
            out.push_back(j->block_info());
    co_return out;
}

// ---- job-* -----------------------------------------------------------------------------------

boost::asio::awaitable<result<void>> qmp_job_pause(qmp::context& ctx, job_pause_args args)
{
    auto j = find_job(ctx, args.id);
    if (!j)
        co_return j.error();
    co_return (*j)->user_pause();
}

boost::asio::awaitable<result<void>> qmp_job_resume(qmp::context& ctx, job_resume_args args)
{
    auto j = find_job(ctx, args.id);
    if (!j)
        co_return j.error();
    co_return (*j)->user_resume();
}

boost::asio::awaitable<result<void>> qmp_job_cancel(qmp::context& ctx, job_cancel_args args)
{
    auto j = find_job(ctx, args.id);
    if (!j)
        co_return j.error();
    co_return (*j)->user_cancel(true);   // job-cancel is always a force cancel
}

boost::asio::awaitable<result<void>> qmp_job_complete(qmp::context& ctx, job_complete_args args)
{
    auto j = find_job(ctx, args.id);
    if (!j)
        co_return j.error();
    co_return (*j)->complete();
}

boost::asio::awaitable<result<void>> qmp_job_dismiss(qmp::context& ctx, job_dismiss_args args)
{
    auto j = find_job(ctx, args.id);
    if (!j)
        co_return j.error();
    co_return (*j)->dismiss();
}

boost::asio::awaitable<result<void>> qmp_job_finalize(qmp::context& ctx, job_finalize_args args)
{
    auto j = find_job(ctx, args.id);
    if (!j)
        co_return j.error();
    co_return (*j)->finalize();
}

// ---- block-job-* -----------------------------------------------------------------------------

boost::asio::awaitable<result<void>> qmp_block_job_set_speed(qmp::context& ctx, block_job_set_speed_args args)
{
    auto j = find_block_job(ctx, args.device);
    if (!j)
        co_return j.error();
    co_return (*j)->set_speed(args.speed);
}

boost::asio::awaitable<result<void>> qmp_block_job_cancel(qmp::context& ctx, block_job_cancel_args args)
{
    auto j = find_block_job(ctx, args.device);
    if (!j)
        co_return j.error();
    bool force = args.force.value_or(false);
    // Checked before the verb table (QEMU's blockdev.c, qmp_block_job_cancel).
    if ((*j)->user_paused() && !force)
        co_return generic("The block job for device '" + args.device + "' is currently paused");
    co_return (*j)->user_cancel(force);
}

boost::asio::awaitable<result<void>> qmp_block_job_pause(qmp::context& ctx, block_job_pause_args args)
{
    auto j = find_block_job(ctx, args.device);
    if (!j)
        co_return j.error();
    co_return (*j)->user_pause();
}

boost::asio::awaitable<result<void>> qmp_block_job_resume(qmp::context& ctx, block_job_resume_args args)
{
    auto j = find_block_job(ctx, args.device);
    if (!j)
        co_return j.error();
    co_return (*j)->user_resume();
}

boost::asio::awaitable<result<void>> qmp_block_job_complete(qmp::context& ctx, block_job_complete_args args)
{
    auto j = find_block_job(ctx, args.device);
    if (!j)
        co_return j.error();
    co_return (*j)->complete();
}

boost::asio::awaitable<result<void>> qmp_block_job_dismiss(qmp::context& ctx, block_job_dismiss_args args)
{
    auto j = find_block_job(ctx, args.id);
    if (!j)
        co_return j.error();
    co_return (*j)->dismiss();
}

boost::asio::awaitable<result<void>> qmp_block_job_finalize(qmp::context& ctx, block_job_finalize_args args)
{
    auto j = find_block_job(ctx, args.id);
    if (!j)
        co_return j.error();
    co_return (*j)->finalize();
}

} // namespace bjd::qapi
