// SPDX-License-Identifier: MIT
// The job manager: ids, creation, listing (newest first) and shutdown.
#include "bjd/jobs/job.hpp"
#include "bjd/jobs/job_driver.hpp"
#include "bjd/log.hpp"
#include "bjd/qapi/events.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cassert>

namespace bjd::jobs {

manager::manager(asio::io_context& loop, qapi::event_sink& events)
    : loop_(loop), events_(events)
{
}

manager::~manager()
{
    if (running_)
        log::get("jobs")->warn("job manager destroyed with {} job coroutine(s) still running", running_);
}

qapi::result<std::shared_ptr<job>> manager::create(std::string id, job_type type, std::unique_ptr<job_driver> d,
                                                   const job_options& opts, std::shared_ptr<job_txn> txn)
{
    if (auto r = check_job_id(id); !r)
        return r.error();
    if (find(id))
        return qapi::generic("Job ID '" + id + "' already in use");
    std::shared_ptr<job> j(new job(*this, std::move(id), type, std::move(d), opts));
    jobs_.push_back(j);
    j->txn_ = txn ? std::move(txn) : std::make_shared<job_txn>();
    j->txn_->jobs_.insert(j->txn_->jobs_.begin(), j.get());
    // created is the initial state; announce it like a transition from undefined.
    qapi::job_status_change_data ev;
    ev.id = j->id();
    ev.status = job_status::created;
    qapi::emit_job_status_change(events_, ev);
    return j;
}

qapi::result<std::shared_ptr<job>> manager::create_block_job(std::string id, job_type type,
                                                             std::unique_ptr<job_driver> d, job_options opts,
                                                             std::int64_t speed, std::shared_ptr<job_txn> txn)
{
    opts.speed = std::max<std::int64_t>(speed, 0);
    auto j = create(std::move(id), type, std::move(d), opts, std::move(txn));
    if (j && speed < 0) {
        early_fail(**j);
        return qapi::generic("Parameter 'speed' expects a non-negative value");
    }
    return j;
}

void manager::start(job& j)
{
    j.start();
    ++running_;
    auto self = j.shared_from_this();
    // Not detached in spirit: entry() catches everything the driver throws and always
    // completes the job; this handler only sees bugs in the completion path itself.
    asio::co_spawn(loop_, job::entry(self), [this, id = j.id()](std::exception_ptr e) {
        coroutine_done();
        if (!e)
            return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            log::get("jobs")->critical("job '{}': completion path threw: {}", id, ex.what());
        }
    });
}

void manager::early_fail(job& j)
{
    j.early_fail();
}

std::shared_ptr<job> manager::find(std::string_view id) const
{
    for (const auto& j : jobs_)
        if (j->id() == id)
            return j;
    return nullptr;
}

qapi::result<std::shared_ptr<job>> manager::lookup(std::string_view id) const
{
    if (auto j = find(id))
        return j;
    return qapi::generic("Job not found");
}

qapi::result<std::shared_ptr<job>> manager::lookup_block_job(std::string_view id) const
{
    if (auto j = find(id); j && j->block_job())
        return j;
    return qapi::error{qapi::error_class::device_not_active, "Block job '" + std::string(id) + "' not found", {}};
}

std::vector<std::shared_ptr<job>> manager::list() const
{
    return {jobs_.rbegin(), jobs_.rend()};
}

void manager::remove(const job& j)
{
    auto it = std::find_if(jobs_.begin(), jobs_.end(), [&](const auto& p) { return p.get() == &j; });
    assert(it != jobs_.end());
    jobs_.erase(it);
}

void manager::cancel_all()
{
    for (const auto& j : list()) {
        if (j->status() == job_status::concluded || j->status() == job_status::aborting ||
            j->status() == job_status::null)
            continue;
        j->cancel(true);
    }
}

bool manager::idle() const
{
    return running_ == 0;
}

asio::awaitable<void> manager::shutdown()
{
    asio::steady_timer t(loop_);
    // Like QEMU's drain before cancelling: running jobs park at a pause point first (JSC
    // paused/standby), then resume and are force-cancelled (QEMU's job.c, shutdown sequence).
    std::vector<std::shared_ptr<job>> drained;
    for (const auto& j : list()) {
        if (j->started_ && !j->deferred_ && !j->is_completed()) {
            j->pause();
            drained.push_back(j);
        }
    }
    auto parked = [](const job& j) {
        return j.deferred_ || j.status() == job_status::paused || j.status() == job_status::standby;
    };
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (std::any_of(drained.begin(), drained.end(), [&](const auto& j) { return !parked(*j); }) &&
           std::chrono::steady_clock::now() < deadline) {
        t.expires_after(std::chrono::milliseconds(5));
        co_await t.async_wait(asio::use_awaitable);
    }
    for (const auto& j : drained)
        j->resume();
    cancel_all();
    while (!idle()) {
        t.expires_after(std::chrono::milliseconds(10));
        co_await t.async_wait(asio::use_awaitable);
    }
}

} // namespace bjd::jobs
