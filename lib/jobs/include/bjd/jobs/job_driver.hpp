// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Background jobs, implementer side: what a job type (mirror, …) provides to the generic
/// state machine in job.hpp.
///
/// Every method is called on the main loop. `run` is the only coroutine; the others are plain
/// calls made from the manager (QMP verbs or the completion path) and must not block.
/// Lifetime: the driver is owned by its job and destroyed with it, after `clean`.
#include "bjd/jobs/job.hpp"

namespace bjd::jobs {

class job_driver {
public:
    virtual ~job_driver() = default;

    /// The work function. Called once, on the job's coroutine, right after created→running.
    /// Must call `j.pause_point()` (or sleep/yield) between requests and return soon after
    /// `j.is_cancelled()` becomes true. Returns an error (its desc becomes the job's error
    /// text and BLOCK_JOB_COMPLETED.error) or success. Exceptions are caught by the manager
    /// and turned into a failure; they are a bug.
    virtual asio::awaitable<qapi::result<void>> run(job& j) = 0;

    /// The job reached a pause point and is about to pause. Job coroutine context.
    virtual void pause(job& j) {}
    /// The job left a pause point. Job coroutine context.
    virtual void resume(job& j) {}
    /// job-complete/block-job-complete after the verb and pending-cancel checks. Errors are
    /// the command's. Default: the job type cannot be completed.
    virtual qapi::result<void> complete(job& j);
    /// run() succeeded and the job is being finalized (pending). A failure aborts the job
    /// (pending → aborting) with the error's text.
    virtual qapi::result<void> prepare(job& j) { return {}; }
    /// Finalization after success (after prepare).
    virtual void commit(job& j) {}
    /// Finalization after failure or force-cancel.
    virtual void abort(job& j) {}
    /// Always last, after commit or abort: release what run() left behind.
    virtual void clean(job& j) {}
    /// A cancel was requested. Returns the effective force flag: a job that can soft-cancel
    /// (mirror when ready) returns `force`; the default treats every cancel as forced.
    /// Called before the job's flags change; wake nothing here (the manager enters the job).
    virtual bool cancel(job& j, bool force) { return true; }
    /// The speed limit changed (already stored in the job); the manager wakes the job after.
    virtual void set_speed(job& j, std::int64_t speed) {}
    /// block-job-change after the verb check. Default: unsupported.
    virtual qapi::result<void> change(job& j, const qapi::block_job_change_options& opts);
    /// Adds the job type's extra members to query-block-jobs output.
    virtual void fill_info(const job& j, qapi::block_job_info& info) const {}
};

} // namespace bjd::jobs
