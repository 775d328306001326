// SPDX-License-Identifier: MIT
// The job state machine: tables, transitions, verbs and the completion path (QEMU's job.c).
#include "bjd/jobs/job.hpp"

#include "bjd/id.hpp"
#include "bjd/jobs/job_driver.hpp"
#include "bjd/log.hpp"
#include "bjd/qapi/events.hpp"
#include "bjd/result.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <array>
#include <cassert>
#include <cerrno>
#include <cstring>

namespace bjd::jobs {

namespace {

constexpr std::size_t n_status = 11;
constexpr std::size_t n_verb = 8;
static_assert(static_cast<std::size_t>(job_status::null) == n_status - 1);
static_assert(static_cast<std::size_t>(job_verb::change) == n_verb - 1);

// Rows: from; columns: to. Order: undefined created running paused ready standby waiting
// pending aborting concluded null.
constexpr bool transitions[n_status][n_status] = {
    /* undefined */ {0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    /* created   */ {0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1},
    /* running   */ {0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0},
    /* paused    */ {0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0},
    /* ready     */ {0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0},
    /* standby   */ {0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0},
    /* waiting   */ {0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0},
    /* pending   */ {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0},
    /* aborting  */ {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0},
    /* concluded */ {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
    /* null      */ {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
};

// Rows: verb (JobVerb order); columns: status as above.
constexpr bool verbs[n_verb][n_status] = {
    /* cancel    */ {0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0},
    /* pause     */ {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    /* resume    */ {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    /* set-speed */ {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    /* complete  */ {0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0},
    /* dismiss   */ {0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0},
    /* finalize  */ {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0},
    /* change    */ {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
};

std::string str(job_status s) { return std::string(qapi::to_string(s)); }

} // namespace

bool transition_allowed(job_status from, job_status to) noexcept
{
    return transitions[static_cast<std::size_t>(from)][static_cast<std::size_t>(to)];
}

bool verb_allowed(job_verb verb, job_status s) noexcept
{
    return verbs[static_cast<std::size_t>(verb)][static_cast<std::size_t>(s)];
}

qapi::result<void> check_job_id(std::string_view id)
{
    if (!id_wellformed(id))
        return qapi::generic("Invalid job ID '" + std::string(id) + "'");
    return {};
}

qapi::result<void> job_driver::complete(job& j)
{
    return qapi::generic("The active block job '" + j.id() + "' cannot be completed");
}

qapi::result<void> job_driver::change(job& j, const qapi::block_job_change_options&)
{
    return qapi::generic("Job type '" + std::string(qapi::to_string(j.type())) + "' does not support changes");
}

job::job(manager& m, std::string id, job_type type, std::unique_ptr<job_driver> d, const job_options& o)
    : mgr_(m), id_(std::move(id)), type_(type), driver_(std::move(d)), opts_(o), timer_(m.loop())
{
}

job::~job()
{
    leave_txn();
}

void job::leave_txn() noexcept
{
    if (!txn_)
        return;
    auto& v = txn_->jobs_;
    v.erase(std::remove(v.begin(), v.end(), this), v.end());
    txn_.reset();
}

bool job::is_ready() const noexcept
{
    return status_ == job_status::ready || status_ == job_status::standby;
}

bool job::is_completed() const noexcept
{
    switch (status_) {
    case job_status::waiting:
    case job_status::pending:
    case job_status::aborting:
    case job_status::concluded:
    case job_status::null:
        return true;
    default:
        return false;
    }
}

void job::transition(job_status to)
{
    job_status from = status_;
    // A programmer error, never a QMP error.
    if (!transition_allowed(from, to)) {
        log::get("jobs")->critical("job '{}': illegal transition {} -> {}", id_, str(from), str(to));
        std::abort();
    }
    status_ = to;
    if (from == to)
        return;   // aborting -> aborting is silent
    // One line per state change, as operators of libvirt and Proxmox expect.
    log::with_fields(spdlog::level::info, "jobs", fmt::format("job '{}': {} -> {}", id_, str(from), str(to)),
                     {{"JOB_ID", id_}, {"JOB_STATUS", str(to)}});
    qapi::job_status_change_data ev;
    ev.id = id_;
    ev.status = to;
    qapi::emit_job_status_change(mgr_.events(), ev);
    if (mgr_.status_listener_)
        mgr_.status_listener_(*this, to);
}

qapi::result<void> job::apply_verb(job_verb v)
{
    if (verb_allowed(v, status_))
        return {};
    return qapi::generic("Job '" + id_ + "' in state '" + str(status_) + "' cannot accept command verb '" +
                         std::string(qapi::to_string(v)) + "'");
}

// ---- pause / sleep -------------------------------------------------------------------------

void job::pause()
{
    ++pause_count_;
    // Wake the coroutine so it reaches a pause point now rather than after its sleep.
    enter();
}

void job::resume()
{
    assert(pause_count_ > 0);
    if (--pause_count_ == 0)
        enter();
}

void job::enter()
{
    if (!started_ || deferred_ || busy_)
        return;
    timer_.cancel();
}

asio::awaitable<void> job::do_yield(std::optional<std::chrono::steady_clock::time_point> deadline)
{
    timer_.expires_at(deadline ? *deadline : std::chrono::steady_clock::time_point::max());
    timed_sleep_ = bool(deadline);
    busy_ = false;
    co_await timer_.async_wait(bjd::nothrow_awaitable);
    busy_ = true;
    timed_sleep_ = false;
}

asio::awaitable<void> job::pause_point()
{
    if (!should_pause() || is_cancelled())
        co_return;
    driver_->pause(*this);
    if (should_pause() && !is_cancelled()) {
        job_status was = status_;
        transition(was == job_status::ready ? job_status::standby : job_status::paused);
        while (should_pause() && !is_cancelled())
            co_await do_yield(std::nullopt);
        // A job that became ready is never paused (ready is set by the coroutine itself).
        transition(was);
    }
    driver_->resume(*this);
}

asio::awaitable<void> job::sleep(std::chrono::nanoseconds d)
{
    if (!should_pause() && !is_cancelled())
        co_await do_yield(std::chrono::steady_clock::now() + d);
    co_await pause_point();
}

asio::awaitable<void> job::yield()
{
    if (!should_pause() && !is_cancelled())
        co_await do_yield(std::nullopt);
    co_await pause_point();
}

qapi::event_sink& job::events() noexcept
{
    return mgr_.events();
}

void job::transition_to_ready()
{
    transition(job_status::ready);
    if (ready_event_sent_ || !opts_.block_job)
        return;
    ready_event_sent_ = true;
    qapi::block_job_ready_data ev;
    ev.type = type_;
    ev.device = id_;
    ev.len = static_cast<std::int64_t>(total_);
    ev.offset = static_cast<std::int64_t>(current_);
    ev.speed = opts_.speed;
    qapi::emit_block_job_ready(mgr_.events(), ev);
}

qapi::block_error_action job::error_action(qapi::blockdev_on_error on_err, bool is_read, int errnum)
{
    using qapi::block_error_action;
    using qapi::blockdev_on_error;
    block_error_action action = block_error_action::report;
    switch (on_err) {
    case blockdev_on_error::enospc:
    case blockdev_on_error::auto_:
        action = errnum == ENOSPC ? block_error_action::stop : block_error_action::report;
        break;
    case blockdev_on_error::stop:
        action = block_error_action::stop;
        break;
    case blockdev_on_error::ignore:
        action = block_error_action::ignore;
        break;
    case blockdev_on_error::report:
        action = block_error_action::report;
        break;
    }
    qapi::block_job_error_data ev;
    ev.device = id_;
    ev.operation = is_read ? qapi::io_operation_type::read : qapi::io_operation_type::write;
    ev.action = action;
    if (errnum > 0)
        ev.error_code = errno_name(errno_error(errnum));
    qapi::emit_block_job_error(mgr_.events(), ev);
    if (action == block_error_action::stop) {
        if (!user_paused_) {
            user_paused_ = true;
            pause();
        }
        if (io_status_ == qapi::block_device_io_status::ok)
            io_status_ = errnum == ENOSPC ? qapi::block_device_io_status::nospace : qapi::block_device_io_status::failed;
    }
    const std::string err = errnum > 0 ? errno_name(errno_error(errnum)) : std::string("?");
    log::with_fields(spdlog::level::warn, "jobs",
                     fmt::format("job '{}': {} error {} ({}), io-status {}", id_, is_read ? "read" : "write", err,
                                 qapi::to_string(action), qapi::to_string(io_status_)),
                     {{"JOB_ID", id_}, {"ERRNO", err}, {"IO_STATUS", qapi::to_string(io_status_)}});
    return action;
}

// ---- verbs ---------------------------------------------------------------------------------

qapi::result<void> job::user_pause()
{
    if (auto r = apply_verb(job_verb::pause); !r)
        return r;
    if (user_paused_)
        return qapi::generic("Job is already paused");
    user_paused_ = true;
    pause();
    return {};
}

qapi::result<void> job::user_resume()
{
    if (!user_paused_ || pause_count_ <= 0)
        return qapi::generic("Can't resume a job that was not paused");
    if (auto r = apply_verb(job_verb::resume); !r)
        return r;
    io_status_ = qapi::block_device_io_status::ok;
    user_paused_ = false;
    resume();
    return {};
}

qapi::result<void> job::user_cancel(bool force)
{
    if (auto r = apply_verb(job_verb::cancel); !r)
        return r;
    cancel(force);
    return {};
}

void job::cancel_async(bool force)
{
    force = driver_->cancel(*this, force);
    if (user_paused_) {
        io_status_ = qapi::block_device_io_status::ok;
        user_paused_ = false;
        assert(pause_count_ > 0);
        --pause_count_;   // the caller enters the job
    }
    // A soft cancel after the work is done is ignored; a force cancel overrides a soft one.
    if (force || !deferred_) {
        cancelled_ = true;
        force_cancel_ = force_cancel_ || force;
    }
}

void job::cancel(bool force)
{
    if (status_ == job_status::concluded) {
        do_dismiss();
        return;
    }
    cancel_async(force);
    if (!started_) {
        completed();
    } else if (deferred_) {
        // A soft cancel of a finished job was ignored; a forced one fails its transaction.
        if (is_cancelled() && status_ != job_status::aborting && status_ != job_status::concluded)
            completed_txn_abort();
    } else {
        enter();   // the coroutine may be parked at a pause point or sleeping
    }
}

qapi::result<void> job::complete()
{
    if (auto r = apply_verb(job_verb::complete); !r)
        return r;
    if (cancel_requested())
        return qapi::generic("The active block job '" + id_ + "' cannot be completed");
    return driver_->complete(*this);
}

qapi::result<void> job::finalize()
{
    if (auto r = apply_verb(job_verb::finalize); !r)
        return r;
    do_finalize();
    return {};
}

qapi::result<void> job::dismiss()
{
    if (auto r = apply_verb(job_verb::dismiss); !r)
        return r;
    do_dismiss();
    return {};
}

qapi::result<void> job::set_speed(std::int64_t speed)
{
    if (auto r = apply_verb(job_verb::set_speed); !r)
        return r;
    if (speed < 0)
        return qapi::generic("Parameter 'speed' expects a non-negative value");
    std::int64_t old = opts_.speed;
    opts_.speed = speed;
    driver_->set_speed(*this, speed);
    // Effective at once: a job throttled by the old limit must not finish its sleep.
    if ((speed == 0 || speed > old) && sleeping_timed())
        enter();
    return {};
}

qapi::result<void> job::change(const qapi::block_job_change_options& opts)
{
    if (auto r = apply_verb(job_verb::change); !r)
        return r;
    return driver_->change(*this, opts);
}

// ---- start and completion ------------------------------------------------------------------

void job::start()
{
    assert(status_ == job_status::created && !started_);
    started_ = true;
    busy_ = true;
    transition(job_status::running);
}

void job::early_fail()
{
    assert(!started_);
    leave_txn();
    transition(job_status::null);
    mgr_.remove(*this);
}

asio::awaitable<void> job::entry(std::shared_ptr<job> self)
{
    qapi::result<void> r = qapi::generic("job did not run");
    try {
        r = co_await self->driver_->run(*self);
    } catch (const std::exception& e) {
        // Never lose a job's outcome: a bug in a driver fails the job instead.
        log::get("jobs")->error("job '{}': run() threw: {}", self->id_, e.what());
        r = qapi::generic(std::string("Internal error: ") + e.what());
    }
    self->busy_ = false;
    self->deferred_ = true;
    if (!r) {
        self->failed_ = true;
        self->error_ = r.error().desc;
        log::with_fields(spdlog::level::warn, "jobs", fmt::format("job '{}' failed: {}", self->id_, r.error().desc),
                         {{"JOB_ID", self->id_}});
    }
    self->completed();
}

void job::update_rc()
{
    if (!failed_ && is_cancelled()) {
        failed_ = true;
        error_ = std::strerror(ECANCELED);   // "Operation canceled"
        error_errno_ = ECANCELED;
    }
    if (failed_)
        transition(job_status::aborting);
}

void job::completed()
{
    assert(!is_completed());
    update_rc();
    if (failed_)
        completed_txn_abort();
    else
        completed_success();
}

void job::completed_success()
{
    transition(job_status::waiting);
    // The last job of the transaction to complete moves all of them on (QEMU's
    // job_completed_txn_success); they finalize by themselves unless one waits for job-finalize.
    const auto txn = txn_;
    const auto jobs = txn->jobs_;
    if (std::any_of(jobs.begin(), jobs.end(), [](const job* o) { return !o->is_completed(); }))
        return;
    for (job* o : jobs)
        o->transition_to_pending();
    if (std::all_of(jobs.begin(), jobs.end(), [](const job* o) { return o->opts_.auto_finalize; }))
        do_finalize();
}

void job::transition_to_pending()
{
    transition(job_status::pending);
    if (!opts_.auto_finalize)
        emit_pending_event();
}

void job::emit_pending_event()
{
    if (!opts_.block_job)
        return;
    qapi::block_job_pending_data ev;
    ev.type = type_;
    ev.id = id_;
    qapi::emit_block_job_pending(mgr_.events(), ev);
}

qapi::result<void> job::run_end_hook(bool success)
{
    if (end_hook_ran_ || !started_ || !mgr_.end_hook_)
        return {};
    end_hook_ran_ = true;
    return mgr_.end_hook_(*this, success);
}

bool job::prepare_step()
{
    if (!failed_) {
        // Before the driver's prepare takes effect (a mirror pivots there).
        auto r = run_end_hook(true);
        if (r)
            r = driver_->prepare(*this);
        if (!r) {
            failed_ = true;
            error_ = r.error().desc;
        }
        update_rc();
    }
    return !failed_;
}

void job::do_finalize()
{
    // Every job of the transaction prepares, in order, until one fails (QEMU's job_do_finalize).
    auto self = shared_from_this();
    const auto txn = txn_;
    const auto jobs = txn->jobs_;
    if (!std::all_of(jobs.begin(), jobs.end(), [](job* o) { return o->prepare_step(); })) {
        completed_txn_abort();
        return;
    }
    for (job* o : jobs)
        o->finalize_single();
}

void job::cancel_for_txn()
{
    cancel_async(true);
    if (!started_)
        update_rc();   // never ran: done at once (QEMU 7.2 would wait for it forever)
    else if (!deferred_)
        enter();
}

void job::completed_txn_abort()
{
    // QEMU's job_completed_txn_abort: the first failure force-cancels the other jobs of the
    // transaction, then finalizes them in the transaction's order, each with its own outcome,
    // waiting (in a nested event loop) for each one still running. Here whichever job
    // completes carries the finalizing on as far as the jobs in order have completed.
    auto self = shared_from_this();
    const auto txn = txn_;
    if (!txn->aborting_) {
        txn->aborting_ = true;
        for (job* o : std::vector<job*>(txn->jobs_))
            if (o != this)
                o->cancel_for_txn();
    }
    while (!txn->jobs_.empty() && txn->jobs_.front()->is_completed()) {
        auto o = txn->jobs_.front()->shared_from_this();
        o->finalize_single();
    }
}

void job::finalize_single()
{
    auto self = shared_from_this();   // the manager may drop its reference in conclude()
    update_rc();
    if (failed_) {
        // A success ran it in prepare_step already.
        if (auto h = run_end_hook(false); !h)
            log::get("jobs")->error("job '{}': {}", id_, h.error().desc);
    }
    if (!failed_)
        driver_->commit(*this);
    else
        driver_->abort(*this);
    driver_->clean(*this);
    if (started_ && opts_.block_job) {
        if (is_cancelled()) {
            qapi::block_job_cancelled_data ev;
            ev.type = type_;
            ev.device = id_;
            ev.len = static_cast<std::int64_t>(total_);
            ev.offset = static_cast<std::int64_t>(current_);
            ev.speed = opts_.speed;
            qapi::emit_block_job_cancelled(mgr_.events(), ev);
        } else {
            qapi::block_job_completed_data ev;
            ev.type = type_;
            ev.device = id_;
            ev.len = static_cast<std::int64_t>(total_);
            ev.offset = static_cast<std::int64_t>(current_);
            ev.speed = opts_.speed;
            if (failed_)
                ev.error = error_;
            ev.error_code = error_code_name();
            qapi::emit_block_job_completed(mgr_.events(), ev);
        }
    }
    leave_txn();
    conclude();
}

void job::conclude()
{
    transition(job_status::concluded);
    if (opts_.auto_dismiss || !started_)
        do_dismiss();
}

void job::do_dismiss()
{
    assert(status_ == job_status::concluded);
    transition(job_status::null);
    mgr_.remove(*this);
}

// ---- query ---------------------------------------------------------------------------------

std::optional<std::string> job::error_code_name() const
{
    if (int e = error_errno())
        return errno_name(errno_error(e));
    return std::nullopt;
}

qapi::job_info job::info() const
{
    qapi::job_info i;
    i.id = id_;
    i.type = type_;
    i.status = status_;
    i.current_progress = static_cast<std::int64_t>(current_);
    i.total_progress = static_cast<std::int64_t>(total_);
    if (failed_)
        i.error = error_;
    i.error_code = error_code_name();
    i.restore_note = restore_note_;
    return i;
}

qapi::block_job_info job::block_info() const
{
    qapi::block_job_info i;
    i.type = std::string(qapi::to_string(type_));
    i.device = id_;
    i.len = static_cast<std::int64_t>(total_);
    i.offset = static_cast<std::int64_t>(current_);
    i.busy = busy_;
    i.paused = pause_count_ > 0;
    i.speed = opts_.speed;
    i.io_status = io_status_;
    i.ready = is_ready();
    i.status = status_;
    i.auto_finalize = opts_.auto_finalize;
    i.auto_dismiss = opts_.auto_dismiss;
    if (failed_)
        i.error = error_;
    i.error_code = error_code_name();
    i.restore_note = restore_note_;
    driver_->fill_info(*this, i);
    return i;
}

} // namespace bjd::jobs
