// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// blockdev-create: a job of type "create" (not a block job: no BLOCK_JOB_* events, not in
/// query-block-jobs) with auto-finalize on and auto-dismiss off, as QEMU 7.2 makes it.
#include "bjd/jobs/job.hpp"

#include <string>

namespace bjd::block { class graph; }

namespace bjd::jobs {

/// Checks that the driver can create images ("Driver does not support blockdev-create"),
/// creates the job (JOB_STATUS_CHANGE created; "Invalid job ID 'X'", "Job ID 'X' already in
/// use") and starts it (running). Every other error (option checks, lookups, I/O) fails the
/// job: aborting, concluded, with the text in query-jobs' `error`. Main loop only.
qapi::result<void> start_create(manager& m, block::graph& g, std::string job_id, qapi::blockdev_create_options opts);

} // namespace bjd::jobs
