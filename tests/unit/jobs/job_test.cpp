// SPDX-License-Identifier: MIT
// The job state machine, state by state, with a fake driver and a hand-driven loop.
#include "bjd/jobs/job.hpp"
#include "bjd/jobs/job_driver.hpp"

#include <catch2/catch.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cerrno>
#include <ostream>
#include <string>
#include <vector>

namespace bjd::qapi {
// Lets Catch print failed results.
inline std::ostream& operator<<(std::ostream& os, const error& e) { return os << e.desc; }
} // namespace bjd::qapi

using namespace bjd;
using jobs::job_status;
using jobs::job_verb;

namespace {

struct recorder : qapi::event_sink {
    std::vector<std::string> seen;   // "EVENT" or "JOB_STATUS_CHANGE:status"
    std::vector<boost::json::object> data;
    void emit(std::string_view event, boost::json::object d) override
    {
        std::string s(event);
        if (event == "JOB_STATUS_CHANGE")
            s += ":" + std::string(d.at("status").as_string());
        seen.push_back(s);
        data.push_back(std::move(d));
    }
    std::vector<std::string> take() { auto r = std::move(seen); seen.clear(); data.clear(); return r; }
};

using strings = std::vector<std::string>;

/// Runs until told to finish; becomes ready when `make_ready`; fails when `fail`.
struct fake_driver : jobs::job_driver {
    bool make_ready = false;
    bool finish = false;
    bool fail = false;
    bool fail_prepare = false;
    int fail_errno = 0;   ///< reported with `fail` (0: a failure without an errno)
    strings calls;

    boost::asio::awaitable<qapi::result<void>> run(jobs::job& j) override
    {
        j.progress_set_remaining(100);
        while (!j.is_cancelled()) {
            if (fail) {
                j.set_error_errno(fail_errno);
                co_return qapi::generic("Input/output error");
            }
            if (make_ready && !j.is_ready()) {
                j.progress_done(100);
                j.transition_to_ready();
            }
            if (finish || (j.cancel_requested() && j.is_ready()))
                break;
            co_await j.yield();
        }
        co_return qapi::result<void>{};
    }
    qapi::result<void> complete(jobs::job& j) override { calls.push_back("complete"); finish = true; j.enter(); return {}; }
    qapi::result<void> prepare(jobs::job&) override
    {
        calls.push_back("prepare");
        if (fail_prepare)
            return qapi::generic("Operation not permitted");
        return {};
    }
    void commit(jobs::job&) override { calls.push_back("commit"); }
    void abort(jobs::job&) override { calls.push_back("abort"); }
    void clean(jobs::job&) override { calls.push_back("clean"); }
    bool cancel(jobs::job& j, bool force) override { return force || !j.is_ready(); }
};

struct fixture {
    boost::asio::io_context io;
    recorder ev;
    jobs::manager mgr{io, ev};
    fake_driver* drv = nullptr;

    std::shared_ptr<jobs::job> make(jobs::job_options o = {}, std::string id = "j1")
    {
        auto d = std::make_unique<fake_driver>();
        drv = d.get();
        auto r = mgr.create(id, jobs::job_type::mirror, std::move(d), o);
        REQUIRE(r);
        return *r;
    }
    std::shared_ptr<jobs::job> started(jobs::job_options o = {})
    {
        auto j = make(o);
        mgr.start(*j);
        io.poll();
        ev.take();
        return j;
    }
    std::string verb_error(qapi::result<void> r)
    {
        REQUIRE_FALSE(r);
        return r.error().desc;
    }
};

} // namespace

TEST_CASE("jobs: transition and verb tables", "[jobs]")
{
    CHECK(jobs::transition_allowed(job_status::created, job_status::running));
    CHECK(jobs::transition_allowed(job_status::aborting, job_status::aborting));
    CHECK_FALSE(jobs::transition_allowed(job_status::paused, job_status::ready));
    CHECK_FALSE(jobs::transition_allowed(job_status::concluded, job_status::running));
    CHECK(jobs::verb_allowed(job_verb::complete, job_status::standby));
    CHECK_FALSE(jobs::verb_allowed(job_verb::complete, job_status::running));
    CHECK_FALSE(jobs::verb_allowed(job_verb::cancel, job_status::concluded));
    CHECK(jobs::verb_allowed(job_verb::dismiss, job_status::concluded));
    CHECK(jobs::check_job_id("a-1.b_c"));
    CHECK(jobs::check_job_id("1abc").error().desc == "Invalid job ID '1abc'");
    CHECK(jobs::check_job_id("").error().desc == "Invalid job ID ''");
}

TEST_CASE("jobs: manager ids and listing", "[jobs]")
{
    fixture f;
    auto a = f.make({}, "first");
    auto b = f.make({}, "second");
    CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:created", "JOB_STATUS_CHANGE:created"});
    auto dup = f.mgr.create("first", jobs::job_type::mirror, std::make_unique<fake_driver>(), {});
    REQUIRE_FALSE(dup);
    CHECK(dup.error().desc == "Job ID 'first' already in use");
    auto l = f.mgr.list();
    REQUIRE(l.size() == 2);
    CHECK(l[0]->id() == "second");
    CHECK(l[1]->id() == "first");
    CHECK(f.mgr.lookup("nosuch").error().desc == "Job not found");
    CHECK(f.mgr.lookup("nosuch").error().cls == qapi::error_class::generic_error);
    auto bj = f.mgr.lookup_block_job("nosuch");
    CHECK(bj.error().cls == qapi::error_class::device_not_active);
    CHECK(bj.error().desc == "Block job 'nosuch' not found");
    f.mgr.early_fail(*a);
    CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:null"});
    CHECK(f.mgr.find("first") == nullptr);
}

TEST_CASE("jobs: state machine", "[jobs]")
{
    fixture f;

    SECTION("created")
    {
        auto j = f.make();
        CHECK(j->status() == job_status::created);
        CHECK(f.verb_error(j->complete()) == "Job 'j1' in state 'created' cannot accept command verb 'complete'");
        CHECK(f.verb_error(j->dismiss()) == "Job 'j1' in state 'created' cannot accept command verb 'dismiss'");
        f.ev.take();
        REQUIRE(j->user_cancel(false));
        // Never started: no BLOCK_JOB_* event, dismissed at once.
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:aborting", "JOB_STATUS_CHANGE:concluded",
                                     "JOB_STATUS_CHANGE:null"});
        CHECK(f.mgr.find("j1") == nullptr);
    }

    SECTION("running")
    {
        auto j = f.make();
        f.ev.take();
        f.mgr.start(*j);
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:running"});
        f.io.poll();
        CHECK(j->status() == job_status::running);
        CHECK_FALSE(j->busy());   // yielding
        CHECK(f.verb_error(j->complete()) == "Job 'j1' in state 'running' cannot accept command verb 'complete'");
        CHECK(f.verb_error(j->user_resume()) == "Can't resume a job that was not paused");
        CHECK(f.verb_error(j->set_speed(-1)) == "Parameter 'speed' expects a non-negative value");
        REQUIRE(j->set_speed(1000));
        CHECK(j->speed() == 1000);
        // Cancel before ready is always a force cancel.
        REQUIRE(j->user_cancel(false));
        f.io.poll();
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:aborting", "BLOCK_JOB_CANCELLED",
                                     "JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"});
        CHECK(f.mgr.idle());
    }

    SECTION("paused")
    {
        auto j = f.started();
        REQUIRE(j->user_pause());
        CHECK(j->paused());
        CHECK(f.verb_error(j->user_pause()) == "Job is already paused");
        f.io.poll();
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:paused"});
        CHECK(j->status() == job_status::paused);
        REQUIRE(j->user_resume());
        f.io.poll();
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:running"});
        CHECK_FALSE(j->paused());
        // Force cancel undoes a user pause.
        REQUIRE(j->user_pause());
        f.io.poll();
        f.ev.take();
        REQUIRE(j->user_cancel(true));
        f.io.poll();
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:running", "JOB_STATUS_CHANGE:aborting",
                                     "BLOCK_JOB_CANCELLED", "JOB_STATUS_CHANGE:concluded",
                                     "JOB_STATUS_CHANGE:null"});
    }

    SECTION("ready")
    {
        auto j = f.make();
        f.drv->make_ready = true;
        f.mgr.start(*j);
        f.io.poll();
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:created", "JOB_STATUS_CHANGE:running",
                                     "JOB_STATUS_CHANGE:ready", "BLOCK_JOB_READY"});
        CHECK(j->is_ready());
        CHECK(j->block_info().ready);
        CHECK(j->progress_current() == 100);
        CHECK(j->progress_total() == 100);

        SECTION("complete")
        {
            REQUIRE(j->complete());
            f.io.poll();
            CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:waiting", "JOB_STATUS_CHANGE:pending",
                                         "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE:concluded",
                                         "JOB_STATUS_CHANGE:null"});
            CHECK(f.mgr.find("j1") == nullptr);
        }
        SECTION("soft cancel completes without error")
        {
            REQUIRE(j->user_cancel(false));
            CHECK(f.verb_error(j->complete()) == "The active block job 'j1' cannot be completed");
            f.io.poll();
            auto seen = f.ev.seen;
            CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:waiting", "JOB_STATUS_CHANGE:pending",
                                         "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE:concluded",
                                         "JOB_STATUS_CHANGE:null"});
        }
        SECTION("force cancel")
        {
            REQUIRE(j->user_cancel(true));
            f.io.poll();
            CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:aborting", "BLOCK_JOB_CANCELLED",
                                         "JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"});
        }
    }

    SECTION("standby")
    {
        auto j = f.make();
        f.drv->make_ready = true;
        f.mgr.start(*j);
        f.io.poll();
        f.ev.take();
        REQUIRE(j->user_pause());
        f.io.poll();
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:standby"});
        CHECK(j->status() == job_status::standby);
        CHECK(j->block_info().ready);
        // Soft cancel refused by the QMP layer for user-paused jobs; complete is allowed and
        // takes effect after resume.
        REQUIRE(j->complete());
        f.io.poll();
        CHECK(f.ev.take().empty());
        REQUIRE(j->user_resume());
        f.io.poll();
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:ready", "JOB_STATUS_CHANGE:waiting",
                                     "JOB_STATUS_CHANGE:pending", "BLOCK_JOB_COMPLETED",
                                     "JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"});
    }

    SECTION("waiting and pending (auto-finalize off)")
    {
        auto j = f.make({.auto_finalize = false});
        f.drv->finish = true;
        f.mgr.start(*j);
        f.io.poll();
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:created", "JOB_STATUS_CHANGE:running",
                                     "JOB_STATUS_CHANGE:waiting", "JOB_STATUS_CHANGE:pending",
                                     "BLOCK_JOB_PENDING"});
        CHECK(j->status() == job_status::pending);
        CHECK(f.verb_error(j->user_pause()) == "Job 'j1' in state 'pending' cannot accept command verb 'pause'");
        CHECK(f.drv->calls.empty());

        SECTION("finalize")
        {
            REQUIRE(j->finalize());
            CHECK(f.drv->calls == strings{"prepare", "commit", "clean"});
            CHECK(f.ev.take() == strings{"BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE:concluded",
                                         "JOB_STATUS_CHANGE:null"});
        }
        SECTION("cancel")
        {
            REQUIRE(j->user_cancel(false));
            CHECK(f.drv->calls == strings{"abort", "clean"});
            CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:aborting", "BLOCK_JOB_CANCELLED",
                                         "JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"});
        }
        SECTION("prepare fails")
        {
            f.drv->fail_prepare = true;
            REQUIRE(j->finalize());
            CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:aborting", "BLOCK_JOB_COMPLETED",
                                         "JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"});
            CHECK(f.drv->calls == strings{"prepare", "abort", "clean"});
        }
    }

    SECTION("aborting (failure)")
    {
        auto j = f.make({.auto_dismiss = false});
        f.drv->fail = true;
        f.mgr.start(*j);
        f.io.poll();
        CHECK(f.ev.seen == strings{"JOB_STATUS_CHANGE:created", "JOB_STATUS_CHANGE:running",
                                   "JOB_STATUS_CHANGE:aborting", "BLOCK_JOB_COMPLETED",
                                   "JOB_STATUS_CHANGE:concluded"});
        CHECK(f.ev.data[3].at("error").as_string() == "Input/output error");
        CHECK(j->status() == job_status::concluded);
        CHECK(j->info().error == std::optional<std::string>("Input/output error"));
    }

    SECTION("concluded")
    {
        auto j = f.make({.auto_dismiss = false});
        f.mgr.start(*j);
        f.io.poll();
        REQUIRE(j->user_cancel(true));
        f.io.poll();
        CHECK(j->status() == job_status::concluded);
        CHECK(j->block_info().error == std::optional<std::string>("Operation canceled"));
        CHECK(f.verb_error(j->user_cancel(true)) ==
              "Job 'j1' in state 'concluded' cannot accept command verb 'cancel'");
        CHECK(f.mgr.list().size() == 1);
        f.ev.take();
        REQUIRE(j->dismiss());
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:null"});
        CHECK(f.mgr.list().empty());
    }
}

TEST_CASE("jobs: the end hook runs before the end takes effect", "[jobs]")
{
    fixture f;
    strings order;
    bool refuse = false;
    f.mgr.set_end_hook([&](jobs::job& j, bool success) -> qapi::result<void> {
        order.push_back(std::string(success ? "end-hook:success:" : "end-hook:failure:") +
                        std::string(qapi::to_string(j.status())));
        if (refuse)
            return qapi::generic("cannot remove");
        return {};
    });
    SECTION("success: before prepare (a mirror's pivot) and the completion events")
    {
        auto j = f.started();
        f.drv->finish = true;
        j->enter();
        f.io.poll();
        CHECK(order == strings{"end-hook:success:pending"});
        CHECK(f.drv->calls == strings{"prepare", "commit", "clean"});
        CHECK(f.ev.take() == strings{"JOB_STATUS_CHANGE:waiting", "JOB_STATUS_CHANGE:pending",
                                     "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE:concluded", "JOB_STATUS_CHANGE:null"});
    }
    SECTION("an error fails the job instead: no prepare")
    {
        refuse = true;
        auto j = f.started({.auto_dismiss = false});
        f.drv->finish = true;
        j->enter();
        f.io.poll();
        CHECK(order == strings{"end-hook:success:pending"});   // once, not again for the abort
        CHECK(f.drv->calls == strings{"abort", "clean"});
        CHECK(j->status() == job_status::concluded);
        CHECK(j->info().error == std::optional<std::string>("cannot remove"));
    }
    SECTION("cancel: before abort and BLOCK_JOB_CANCELLED")
    {
        auto j = f.started();
        REQUIRE(j->user_cancel(true));
        f.io.poll();
        CHECK(order == strings{"end-hook:failure:aborting"});
        CHECK(f.drv->calls == strings{"abort", "clean"});
    }
    SECTION("a job that never started: no hook")
    {
        auto j = f.make();
        f.mgr.early_fail(*j);
        CHECK(order.empty());
    }
}

TEST_CASE("jobs: error actions", "[jobs]")
{
    fixture f;
    auto j = f.started();
    using qapi::block_error_action;
    using qapi::blockdev_on_error;
    CHECK(j->error_action(blockdev_on_error::enospc, false, EIO) == block_error_action::report);
    CHECK(j->error_action(blockdev_on_error::auto_, true, ENOSPC) == block_error_action::stop);
    CHECK(j->user_paused());
    CHECK(j->io_status() == qapi::block_device_io_status::nospace);
    CHECK(f.ev.data[0].at("action").as_string() == "report");
    CHECK(f.ev.data[1].at("operation").as_string() == "read");
    // Already stopped: the event is emitted, the pause is not repeated.
    CHECK(j->error_action(blockdev_on_error::stop, false, EIO) == block_error_action::stop);
    CHECK(j->io_status() == qapi::block_device_io_status::nospace);
    f.io.poll();
    CHECK(j->status() == job_status::paused);
    REQUIRE(j->user_resume());
    CHECK(j->io_status() == qapi::block_device_io_status::ok);
    f.io.poll();
    CHECK(j->status() == job_status::running);
    f.mgr.cancel_all();
    f.io.poll();
    CHECK(f.mgr.list().empty());
}

TEST_CASE("jobs: error-code beside the error text", "[jobs]")
{
    fixture f;

    SECTION("BLOCK_JOB_ERROR names the errno")
    {
        auto j = f.started();
        j->error_action(qapi::blockdev_on_error::report, false, EIO);
        j->error_action(qapi::blockdev_on_error::enospc, true, ENOSPC);
        REQUIRE(f.ev.data.size() >= 2);
        CHECK(f.ev.data[0].at("error-code").as_string() == "EIO");
        CHECK(f.ev.data[1].at("error-code").as_string() == "ENOSPC");
        // An error action does not fail the job by itself: nothing in the query yet.
        CHECK_FALSE(j->info().error_code);
        CHECK(j->error_errno() == 0);
        f.mgr.cancel_all();
        f.io.poll();
    }

    SECTION("a failure with an errno")
    {
        auto j = f.make({.auto_dismiss = false});
        f.drv->fail = true;
        f.drv->fail_errno = ENOSPC;
        f.mgr.start(*j);
        f.io.poll();
        CHECK(j->status() == job_status::concluded);
        CHECK(j->info().error == std::optional<std::string>("Input/output error"));
        CHECK(j->info().error_code == std::optional<std::string>("ENOSPC"));
        CHECK(j->block_info().error_code == std::optional<std::string>("ENOSPC"));
        auto it = std::find(f.ev.seen.begin(), f.ev.seen.end(), "BLOCK_JOB_COMPLETED");
        REQUIRE(it != f.ev.seen.end());
        const auto& d = f.ev.data[static_cast<std::size_t>(it - f.ev.seen.begin())];
        CHECK(d.at("error").as_string() == "Input/output error");
        CHECK(d.at("error-code").as_string() == "ENOSPC");
    }

    SECTION("a failure without an errno has no error-code")
    {
        auto j = f.make({.auto_dismiss = false});
        f.drv->fail = true;
        f.mgr.start(*j);
        f.io.poll();
        CHECK(j->status() == job_status::concluded);
        CHECK(j->info().error);
        CHECK_FALSE(j->info().error_code);
        CHECK_FALSE(j->block_info().error_code);
    }

    SECTION("a cancelled job is ECANCELED")
    {
        auto j = f.make({.auto_dismiss = false});
        f.mgr.start(*j);
        f.io.poll();
        REQUIRE(j->user_cancel(true));
        f.io.poll();
        CHECK(j->info().error == std::optional<std::string>("Operation canceled"));
        CHECK(j->info().error_code == std::optional<std::string>("ECANCELED"));
        CHECK(j->block_info().error_code == std::optional<std::string>("ECANCELED"));
    }

    SECTION("success has neither")
    {
        auto j = f.make({.auto_dismiss = false});
        f.drv->finish = true;
        f.mgr.start(*j);
        f.io.poll();
        CHECK(j->status() == job_status::concluded);
        CHECK_FALSE(j->info().error);
        CHECK_FALSE(j->info().error_code);
        auto it = std::find(f.ev.seen.begin(), f.ev.seen.end(), "BLOCK_JOB_COMPLETED");
        REQUIRE(it != f.ev.seen.end());
        CHECK_FALSE(f.ev.data[static_cast<std::size_t>(it - f.ev.seen.begin())].contains("error-code"));
    }
}

TEST_CASE("jobs: grouped transactions finish together", "[jobs]")
{
    boost::asio::io_context io;
    recorder ev;
    jobs::manager mgr{io, ev};
    auto txn = std::make_shared<jobs::job_txn>();
    fake_driver* d0 = nullptr;
    fake_driver* d1 = nullptr;
    auto make = [&](std::string id, fake_driver*& d, jobs::job_options o = {}) {
        auto drv = std::make_unique<fake_driver>();
        d = drv.get();
        auto r = mgr.create(std::move(id), jobs::job_type::backup, std::move(drv), o, txn);
        REQUIRE(r);
        return *r;
    };
    auto status_events = [&] {
        strings out;
        for (std::size_t i = 0; i < ev.seen.size(); ++i) {
            std::string s = ev.seen[i];
            if (auto it = ev.data[i].find("id"); it != ev.data[i].end())
                s = std::string(it->value().as_string()) + " " + s;
            else if (auto dv = ev.data[i].find("device"); dv != ev.data[i].end())
                s = std::string(dv->value().as_string()) + " " + s;
            out.push_back(s);
        }
        ev.take();
        return out;
    };

    SECTION("the first to finish waits for the other; both finalize, newest first")
    {
        auto j0 = make("j0", d0);
        auto j1 = make("j1", d1);
        mgr.start(*j0);
        mgr.start(*j1);
        io.poll();
        ev.take();
        d0->finish = true;
        j0->enter();
        io.poll();
        CHECK(j0->status() == job_status::waiting);
        CHECK(status_events() == strings{"j0 JOB_STATUS_CHANGE:waiting"});
        d1->finish = true;
        j1->enter();
        io.poll();
        CHECK(status_events() == strings{"j1 JOB_STATUS_CHANGE:waiting", "j1 JOB_STATUS_CHANGE:pending",
                                         "j0 JOB_STATUS_CHANGE:pending", "j1 BLOCK_JOB_COMPLETED",
                                         "j1 JOB_STATUS_CHANGE:concluded", "j1 JOB_STATUS_CHANGE:null",
                                         "j0 BLOCK_JOB_COMPLETED", "j0 JOB_STATUS_CHANGE:concluded",
                                         "j0 JOB_STATUS_CHANGE:null"});
        CHECK(d0->calls == strings{"prepare", "commit", "clean"});
        CHECK(d1->calls == strings{"prepare", "commit", "clean"});
    }

    SECTION("one job waiting for job-finalize holds back the whole transaction")
    {
        auto j0 = make("j0", d0, {.auto_finalize = false});
        auto j1 = make("j1", d1);
        mgr.start(*j0);
        mgr.start(*j1);
        d0->finish = d1->finish = true;
        io.poll();
        CHECK(j0->status() == job_status::pending);
        CHECK(j1->status() == job_status::pending);
        CHECK(d1->calls.empty());
        ev.take();
        REQUIRE(j1->finalize());
        CHECK(mgr.list().empty());
        CHECK(d0->calls == strings{"prepare", "commit", "clean"});
    }

    SECTION("a failure cancels the others, which abort")
    {
        auto j0 = make("j0", d0);
        auto j1 = make("j1", d1);
        mgr.start(*j0);
        mgr.start(*j1);
        io.poll();
        d0->finish = true;   // j0 is done and waiting when j1 fails
        j0->enter();
        io.poll();
        ev.take();
        d1->fail = true;
        j1->enter();
        io.poll();
        CHECK(status_events() == strings{"j1 JOB_STATUS_CHANGE:aborting", "j1 BLOCK_JOB_COMPLETED",
                                         "j1 JOB_STATUS_CHANGE:concluded", "j1 JOB_STATUS_CHANGE:null",
                                         "j0 JOB_STATUS_CHANGE:aborting", "j0 BLOCK_JOB_CANCELLED",
                                         "j0 JOB_STATUS_CHANGE:concluded", "j0 JOB_STATUS_CHANGE:null"});
        CHECK(d0->calls == strings{"abort", "clean"});
        CHECK(d1->calls == strings{"abort", "clean"});
        CHECK(mgr.idle());
    }

    SECTION("a failing prepare aborts every job of the transaction")
    {
        auto j0 = make("j0", d0);
        auto j1 = make("j1", d1);
        d1->fail_prepare = true;   // j1 prepares first: it is the newest
        mgr.start(*j0);
        mgr.start(*j1);
        d0->finish = d1->finish = true;
        io.poll();
        CHECK(d1->calls == strings{"prepare", "abort", "clean"});
        CHECK(d0->calls == strings{"abort", "clean"});
        CHECK(mgr.list().empty());
    }

    SECTION("cancelling jobs that never started ends them all at once")
    {
        auto j0 = make("j0", d0);
        auto j1 = make("j1", d1);
        ev.take();
        REQUIRE(j1->user_cancel(true));
        CHECK(status_events() == strings{"j1 JOB_STATUS_CHANGE:aborting", "j0 JOB_STATUS_CHANGE:aborting",
                                         "j1 JOB_STATUS_CHANGE:concluded", "j1 JOB_STATUS_CHANGE:null",
                                         "j0 JOB_STATUS_CHANGE:concluded", "j0 JOB_STATUS_CHANGE:null"});
        CHECK(mgr.list().empty());
    }
}
