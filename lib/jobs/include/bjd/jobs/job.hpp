// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Background jobs, consumer side: the state machine, the verbs QMP commands apply, and the
/// manager that owns every job (ids, listing, shutdown).
///
/// Threading: everything here lives on the main loop (the manager's io_context); every call
/// must be made there. A job's driver runs as a coroutine on the same loop.
///
/// State machine (QEMU's job.c) is data: `transition_allowed` and `verb_allowed` are table
/// lookups, every status change is asserted against the table and emits JOB_STATUS_CHANGE.
#include "bjd/qapi/error.hpp"
#include "bjd/qapi/event_sink.hpp"
#include "bjd/qapi/types.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::jobs {

namespace asio = boost::asio;

using qapi::job_status;
using qapi::job_type;
using qapi::job_verb;

class job_driver;
class manager;

/// Whether the table of QEMU's job.c allows `from` → `to` (aborting → aborting included).
bool transition_allowed(job_status from, job_status to) noexcept;
/// Whether `verb` may be applied in state `s` (QEMU's job.c verb table).
bool verb_allowed(job_verb verb, job_status s) noexcept;
/// "Invalid job ID 'X'" unless `id` starts with a letter and has only letters, digits, '-',
/// '.', '_' (QEMU's id_wellformed).
qapi::result<void> check_job_id(std::string_view id);

/// What a job is created with.
struct job_options {
    bool auto_finalize = true;
    bool auto_dismiss = true;
    std::int64_t speed = 0;   ///< already validated (≥ 0)
    bool block_job = true;    ///< listed by query-block-jobs, emits BLOCK_JOB_* events
};

class job;

/// QEMU's JobTxn: jobs that finish together (`transaction` with completion-mode grouped).
/// None finalizes before all have completed; when one fails or is cancelled, the others are
/// force-cancelled and all of them abort. A job created without one is alone in its own.
class job_txn {
    friend class job;
    friend class manager;
    std::vector<job*> jobs_;   ///< newest first, as QEMU keeps them: the order events come in
    bool aborting_ = false;
};

class job : public std::enable_shared_from_this<job> {
public:
    ~job();
    job(const job&) = delete;
    job& operator=(const job&) = delete;

    // ---- identity and query ---------------------------------------------------------------
    const std::string& id() const noexcept { return id_; }
    job_type type() const noexcept { return type_; }
    job_status status() const noexcept { return status_; }
    bool block_job() const noexcept { return opts_.block_job; }
    bool auto_finalize() const noexcept { return opts_.auto_finalize; }
    bool auto_dismiss() const noexcept { return opts_.auto_dismiss; }
    std::int64_t speed() const noexcept { return opts_.speed; }
    /// The coroutine is running (not sleeping, yielding, paused, or finished).
    bool busy() const noexcept { return busy_; }
    /// Any pause (user, error stop, internal) is in effect.
    bool paused() const noexcept { return pause_count_ > 0; }
    bool user_paused() const noexcept { return user_paused_; }
    /// ready or standby.
    bool is_ready() const noexcept;
    /// waiting, pending, aborting, concluded or null: the work function has returned.
    bool is_completed() const noexcept;
    qapi::block_device_io_status io_status() const noexcept { return io_status_; }
    std::uint64_t progress_current() const noexcept { return current_; }
    std::uint64_t progress_total() const noexcept { return total_; }
    /// The failure message ("Input/output error", "Operation canceled"), set once the job
    /// failed or was cancelled; absent for success and while running.
    const std::optional<std::string>& error() const noexcept { return error_; }
    /// The errno behind `error()` (ECANCELED for a cancelled job), 0 when there is none or the
    /// job has not failed. Shown as `error-code` (its symbolic name).
    int error_errno() const noexcept { return failed_ ? error_errno_ : 0; }
    job_driver& driver() noexcept { return *driver_; }
    /// blockjobd's: how a job recreated from --state-dir at startup was restored (from its
    /// saved progress, or as a full copy and why); shown as `restore-note` by query-jobs and
    /// query-block-jobs. Absent for jobs started over QMP.
    const std::optional<std::string>& restore_note() const noexcept { return restore_note_; }
    void set_restore_note(std::string note) { restore_note_ = std::move(note); }

    qapi::job_info info() const;
    qapi::block_job_info block_info() const;

    // ---- verbs (QMP; each checks the verb table first unless noted) -----------------------
    /// "Job is already paused" when user-paused.
    qapi::result<void> user_pause();
    /// "Can't resume a job that was not paused" (checked before the verb table); resets io-status.
    qapi::result<void> user_resume();
    /// `force` false: a ready job converges without its completion action (driver decides).
    /// Callers implement block-job-cancel's paused check themselves (QEMU's blockdev.c, qmp_block_job_cancel).
    qapi::result<void> user_cancel(bool force);
    /// "The active block job 'X' cannot be completed" if a cancel is pending.
    qapi::result<void> complete();
    qapi::result<void> finalize();
    qapi::result<void> dismiss();
    /// Verb set-speed, then "Parameter 'speed' expects a non-negative value".
    qapi::result<void> set_speed(std::int64_t speed);
    /// Verb change, then the driver.
    qapi::result<void> change(const qapi::block_job_change_options& opts);

    // ---- driver side (call only from the driver, on the job's coroutine unless noted) ------
    /// Force-cancelled: the driver must wind down and return from run().
    bool is_cancelled() const noexcept { return cancelled_ && force_cancel_; }
    /// Any cancel (soft or force) was requested.
    bool cancel_requested() const noexcept { return cancelled_; }
    bool should_pause() const noexcept { return pause_count_ > 0; }
    /// Parks the job while a pause is in effect (running→paused, ready→standby, and back).
    asio::awaitable<void> pause_point();
    /// Sleeps up to `d` (woken early by `enter`), then passes a pause point. No sleep when a
    /// pause is pending.
    asio::awaitable<void> sleep(std::chrono::nanoseconds d);
    /// Sleeps until `enter` (or a cancel), then passes a pause point.
    asio::awaitable<void> yield();
    /// Wakes the coroutine if it sleeps or yields; no-op when busy or finished. Any context.
    void enter();
    /// Whether the coroutine sleeps on a timed sleep (rate limit).
    bool sleeping_timed() const noexcept { return !busy_ && timed_sleep_; }
    /// running → ready, JOB_STATUS_CHANGE + BLOCK_JOB_READY (once).
    void transition_to_ready();
    void progress_done(std::uint64_t n) noexcept { current_ += n; if (total_ < current_) total_ = current_; }
    void progress_set_remaining(std::uint64_t n) noexcept { total_ = current_ + n; }
    void progress_increase_remaining(std::uint64_t n) noexcept { total_ += n; }
    /// Resolves `on_err` for `errnum`, emits BLOCK_JOB_ERROR, and for stop pauses the job as
    /// a user pause and sets io-status (once). Returns the resolved action.
    qapi::block_error_action error_action(qapi::blockdev_on_error on_err, bool is_read, int errnum);
    /// Records the errno behind the failure run() is about to return (error-code). Without
    /// it a failed job has no error-code. The first call wins.
    void set_error_errno(int errnum) noexcept { if (!error_errno_) error_errno_ = errnum; }
    /// Internal pause/resume (drain): counts, not user-visible except as `paused`.
    void pause();
    void resume();
    /// Where the job's events go (a driver's own events, e.g. BLOCK_JOB_COPY_MODE_CHANGED).
    qapi::event_sink& events() noexcept;

private:
    friend class manager;
    job(manager& m, std::string id, job_type type, std::unique_ptr<job_driver> d, const job_options& o);

    void transition(job_status to);
    qapi::result<void> apply_verb(job_verb v);
    void cancel_async(bool force);
    void cancel(bool force);
    void completed();
    void update_rc();
    void completed_success();
    void completed_txn_abort();
    void cancel_for_txn();
    void leave_txn() noexcept;
    void transition_to_pending();
    bool prepare_step();
    void do_finalize();
    void finalize_single();
    void conclude();
    void do_dismiss();
    void early_fail();
    void start();
    asio::awaitable<void> do_yield(std::optional<std::chrono::steady_clock::time_point> deadline);
    static asio::awaitable<void> entry(std::shared_ptr<job> self);
    void emit_pending_event();
    /// The manager's end hook, once (manager::set_end_hook).
    qapi::result<void> run_end_hook(bool success);
    std::optional<std::string> error_code_name() const;

    manager& mgr_;
    std::string id_;
    job_type type_;
    std::unique_ptr<job_driver> driver_;
    job_options opts_;
    std::shared_ptr<job_txn> txn_;   ///< until finalized
    job_status status_ = job_status::created;
    asio::steady_timer timer_;

    int pause_count_ = 0;
    bool user_paused_ = false;
    bool busy_ = false;
    bool timed_sleep_ = false;
    bool started_ = false;
    bool deferred_ = false;      ///< run() returned
    bool cancelled_ = false;
    bool force_cancel_ = false;
    bool ready_event_sent_ = false;
    bool end_hook_ran_ = false;
    bool failed_ = false;        ///< ret != 0 (error_ holds the text)
    std::optional<std::string> error_;
    int error_errno_ = 0;        ///< see set_error_errno
    qapi::block_device_io_status io_status_ = qapi::block_device_io_status::ok;
    std::uint64_t current_ = 0;
    std::uint64_t total_ = 0;
    std::optional<std::string> restore_note_;
};

/// Owns every job. One per daemon, on the main loop.
class manager {
public:
    manager(asio::io_context& loop, qapi::event_sink& events);
    ~manager();
    manager(const manager&) = delete;
    manager& operator=(const manager&) = delete;

    asio::io_context& loop() noexcept { return loop_; }
    qapi::event_sink& events() noexcept { return events_; }

    /// Creates a job in `created` (JOB_STATUS_CHANGE created). Errors: "Invalid job ID 'X'",
    /// "Job ID 'X' already in use". The job is not started: call `start` or `early_fail`.
    /// `txn`: the transaction whose jobs finish together with this one (none: its own).
    qapi::result<std::shared_ptr<job>> create(std::string id, job_type type, std::unique_ptr<job_driver> d,
                                              const job_options& opts, std::shared_ptr<job_txn> txn = nullptr);
    /// QEMU's block_job_create: `create` (opts.speed is ignored), then the speed check, which
    /// fails the new job (created → null) with "Parameter 'speed' expects a non-negative
    /// value". On success the job is in `created`, with its speed limit set.
    qapi::result<std::shared_ptr<job>> create_block_job(std::string id, job_type type, std::unique_ptr<job_driver> d,
                                                        job_options opts, std::int64_t speed,
                                                        std::shared_ptr<job_txn> txn = nullptr);
    /// created → running; spawns the driver's run() with a top-level catch.
    void start(job& j);
    /// created → null (JOB_STATUS_CHANGE null): validation failed after creation.
    void early_fail(job& j);

    /// The job with `id`, or null (dismissed jobs are gone).
    std::shared_ptr<job> find(std::string_view id) const;
    /// job-*: GenericError "Job not found".
    qapi::result<std::shared_ptr<job>> lookup(std::string_view id) const;
    /// block-job-*: DeviceNotActive "Block job 'X' not found".
    qapi::result<std::shared_ptr<job>> lookup_block_job(std::string_view id) const;
    /// Every listed job, newest first.
    std::vector<std::shared_ptr<job>> list() const;

    /// Called after every status change of every job (after JOB_STATUS_CHANGE went out), on
    /// the main loop: the --state-dir keeper forgets a job that has ended. Must not call back
    /// into the job's verbs.
    void set_status_listener(std::function<void(const job&, job_status)> f) { status_listener_ = std::move(f); }
    /// Called once per started job when its outcome is decided and before it takes effect:
    /// on success before the driver's prepare (a mirror's pivot) and so before the completion
    /// is reported; on failure or cancel before the driver's abort and BLOCK_JOB_CANCELLED.
    /// `success` says which. An error fails a job that would have succeeded (its prepare does
    /// not run): the --state-dir keeper removes the job's files here, durably, so that a crash
    /// after a pivot can never bring the old mirror back. Main loop; must not call back into
    /// the job's verbs.
    using end_hook = std::function<qapi::result<void>(job&, bool success)>;
    void set_end_hook(end_hook f) { end_hook_ = std::move(f); }

    /// Force-cancels every job (quit, shutdown).
    void cancel_all();
    /// Whether every job has finished its coroutine and none is mid-completion.
    bool idle() const;
    /// cancel_all, then waits (polling the loop timer) until every job coroutine has ended.
    asio::awaitable<void> shutdown();

private:
    friend class job;
    void remove(const job& j);
    void coroutine_done() noexcept { --running_; }

    asio::io_context& loop_;
    qapi::event_sink& events_;
    std::vector<std::shared_ptr<job>> jobs_;   ///< creation order; list() reverses
    unsigned running_ = 0;                     ///< job coroutines not yet finished
    std::function<void(const job&, job_status)> status_listener_;
    end_hook end_hook_;
};

} // namespace bjd::jobs
