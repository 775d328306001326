// SPDX-License-Identifier: MIT
// blockdev-create. Glue: the job lives in lib/jobs (bjd/jobs/create_job.hpp), the creators
// in lib/block (bjd/block/create.hpp).
#include "bjd/jobs/create_job.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"

namespace bjd::qapi {

boost::asio::awaitable<result<void>> qmp_blockdev_create(qmp::context& ctx, blockdev_create_args args)
{
    co_return jobs::start_create(*ctx.jobs, *ctx.graph, std::move(args.job_id), std::move(args.options));
}

} // namespace bjd::qapi
