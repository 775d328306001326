// SPDX-License-Identifier: MIT
// A mirror's journal in --state-dir, for restarts after kill -9 (docs/job-state.md): the
// write-intent log on the source and the periodic checkpoints.
//
// Why a restart may trust `<id>.ckpt` ∪ `<id>.wil`: a chunk that differs between source and
// target at the crash was either dirty or in flight at the last checkpoint's snapshot (the
// checkpoint has it), or clean then, meaning its last copy had completed and the flush after
// the snapshot made it durable, so a write changed it afterwards, or was in flight at the
// snapshot. Such a write entered the log's hook before it reached the source, and the hook
// lets it go on only once its region is durable in the log; the log drops a region only after
// a later checkpoint whose snapshot saw no write in flight there and which no write entered
// since. Writes that entered no hook (in flight when it was installed) are waited for before
// the first checkpoint.
#include "mirror/mirror_job.hpp"

#include "bjd/log.hpp"
#include "state/intent_log.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace bjd::jobs::detail {

namespace {

auto state_log() { return log::get("state"); }

} // namespace

void mirror_job::start_journal(mirror_journal_config c)
{
    stop_journal();
    auto jn = std::make_shared<mirror_journal>(ex_, std::move(c));
    jn->job = this;
    const std::uint64_t region = intent_region_size(bitmap_.size(), bitmap_.granularity());
    jn->log = std::make_shared<intent_log>(ex_, s_.graph->engine(), bitmap_.size(), region, jn->cfg.generation);
    journal_ = jn;
    // Ownership: the coroutine shares the journal; `job` is cleared when the job leaves the graph.
    asio::co_spawn(ex_, journal_loop(jn), log::on_failure("state", "mirror journal", spdlog::level::critical));
}

void mirror_job::stop_journal()
{
    if (!journal_)
        return;
    journal_->job = nullptr;
    journal_->timer.cancel();
    if (journal_->log) {
        state_log()->info("mirror '{}': journal stopped: {} checkpoints, {} write-intent records, {} writes waited for "
                          "one",
                          journal_->cfg.job_id, journal_->checkpoints, journal_->log->records_written(),
                          journal_->log->writes_waited());
        s_.source->set_write_intent_hook(nullptr);
        journal_->log->stop();
    }
    journal_.reset();
}

void mirror_job::poke_journal()
{
    if (!journal_)
        return;
    journal_->poked = true;
    journal_->timer.cancel();
}

mirror_progress mirror_job::snapshot(job& j) const
{
    mirror_progress p;
    p.job_id = j.id();
    p.size = bitmap_.size();
    p.granularity = bitmap_.granularity();
    p.offset = j.progress_current();
    p.len = j.progress_total();
    p.ready = j.is_ready();
    p.bitmap.assign((bitmap_.chunks() + 7) / 8, 0);
    for (std::uint64_t c = 0; c < bitmap_.chunks(); ++c)
        if (bitmap_.test(c) || in_flight_[c])   // cleared when its copy was issued, not yet on the target
            p.bitmap[c / 8] = static_cast<std::uint8_t>(p.bitmap[c / 8] | (1u << (c % 8)));
    return p;
}

asio::awaitable<void> mirror_job::journal_loop(std::shared_ptr<mirror_journal> jn)
{
    const auto log = jn->log;
    const std::string& dir = jn->cfg.dir;
    const std::string& id = jn->cfg.job_id;
    // A job that ends meanwhile has its files removed: none may appear after that.
    std::function<bool()> alive = [jn] { return jn->job != nullptr; };
    const std::string wil = intent_log_file_name(id);
    auto created = co_await log->create(dir, wil, alive);
    if (!jn->job)
        co_return;
    if (!created) {
        state_log()->error("mirror '{}': no write-intent log ({}): after a crash it copies everything", id,
                           created.error().desc);
        co_return;
    }
    jn->job->s_.source->set_write_intent_hook(log);
    state_log()->info("mirror '{}': write-intent log in {}/{}, {} MiB regions", id, dir, wil, log->region() >> 20);
    jn->poked = true;   // the first checkpoint as soon as the bitmap is complete
    bool retry_soon = false;
    for (;;) {
        if (!jn->poked) {
            // Until the first checkpoint, look again soon: a restart is unprotected till then.
            jn->timer.expires_after(retry_soon ? std::chrono::milliseconds(20) : jn->cfg.interval);
            co_await jn->timer.async_wait(bjd::nothrow_awaitable);
        }
        if (!jn->job)
            co_return;
        jn->poked = false;
        mirror_job& mj = *jn->job;
        if (log->failed()) {
            state_log()->error("mirror '{}': {}; its checkpoint is removed: after a crash it copies everything", id,
                               log->failure());
            (void)remove_file_durable(dir, checkpoint_file_name(id));
            mj.s_.source->set_write_intent_hook(nullptr);
            co_return;
        }
        // The bitmap must be complete, and writes that started before the hook was there are
        // not in the log: none may be in flight at the first snapshot.
        retry_soon = !jn->first_done;
        if (!mj.scan_done_ || !mj.job_ ||
            (!jn->first_done && mj.s_.source->writes_in_flight() != log->in_flight()))
            continue;
        co_await checkpoint(jn);
    }
}

asio::awaitable<void> mirror_job::checkpoint(std::shared_ptr<mirror_journal> jn)
{
    mirror_job& mj = *jn->job;
    const std::string& dir = jn->cfg.dir;
    const std::string name = checkpoint_file_name(jn->cfg.job_id);
    // The same instant: the log's epoch and the bitmap.
    const auto ticket = jn->log->begin_checkpoint();
    mirror_progress p = mj.snapshot(*mj.job_);
    p.generation = jn->cfg.generation;
    p.checkpoint = true;
    io::engine& engine = mj.s_.graph->engine();
    auto target = mj.s_.target;   // the job may go while the flush runs
    // Every copy that completed before the snapshot reaches the disk before the checkpoint
    // says so.
    auto f = co_await target->flush();
    if (!jn->job)
        co_return;
    if (!f) {
        state_log()->warn("mirror '{}': checkpoint skipped: cannot flush the target: {}", jn->cfg.job_id,
                          strerror_text(f.error()));
        co_return;
    }
    for (const auto& path : jn->cfg.files) {
        auto idn = identify_file(path);
        if (!idn) {
            state_log()->warn("mirror '{}': checkpoint skipped: {}", jn->cfg.job_id, idn.error().desc);
            co_return;
        }
        p.files.push_back(*idn);
    }
    // Named, not temporaries of the co_await expression (GCC 12).
    const std::string bytes = encode_progress(p);
    std::function<bool()> alive = [jn] { return jn->job != nullptr; };
    auto w = co_await co_write_file_atomic(engine, dir, name, bytes, alive);
    if (!jn->job)
        co_return;   // the job ended meanwhile: its files went, none reappears
    if (!w) {
        state_log()->warn("mirror '{}': checkpoint not written: {}", jn->cfg.job_id, w.error().desc);
        co_return;
    }
    jn->log->end_checkpoint(ticket);
    jn->first_done = true;
    if (++jn->checkpoints == 1 || p.ready)
        state_log()->debug("mirror '{}': checkpoint {}: {} bytes left, {} regions marked, {} log records",
                           jn->cfg.job_id, jn->checkpoints, p.dirty_bytes(), jn->log->marked(),
                           jn->log->records_written());
}

} // namespace bjd::jobs::detail

namespace bjd::jobs {

qapi::result<void> start_mirror_journal(job& j, mirror_journal_config c)
{
    auto* mj = dynamic_cast<detail::mirror_job*>(&j.driver());
    if (!mj)
        return qapi::generic("not a mirror job");
    if (j.is_completed())
        return qapi::generic("the job has already finished");
    mj->start_journal(std::move(c));
    return {};
}

void stop_mirror_journal(job& j)
{
    if (auto* mj = dynamic_cast<detail::mirror_job*>(&j.driver()))
        mj->stop_journal();
}

} // namespace bjd::jobs
