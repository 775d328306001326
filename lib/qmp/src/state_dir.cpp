// SPDX-License-Identifier: MIT
// --state-dir: keeping mirror jobs across a restart (bjd/qmp/state_dir.hpp, docs/job-state.md).
#include "bjd/qmp/state_dir.hpp"

#include "../commands/mirror_cmds.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/jobs/job_driver.hpp"
#include "bjd/jobs/mirror.hpp"
#include "bjd/log.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qapi/types.hpp"
#include "bjd/qmp/context.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <stdexcept>

#include <csignal>
#include <cstdlib>

#include <dirent.h>
#include <sys/stat.h>

namespace bjd::qmp {

namespace json = boost::json;
namespace asio = boost::asio;

namespace {

constexpr std::string_view def_suffix = ".job.json";
constexpr std::string_view progress_suffix = ".progress";
constexpr int format_version = 1;

auto logger() { return log::get("state"); }

std::string def_name(const std::string& id) { return id + std::string(def_suffix); }
std::string progress_name(const std::string& id) { return id + std::string(progress_suffix); }
using jobs::checkpoint_file_name;
using jobs::intent_log_file_name;
/// What a job's definition has beside it: what is left to copy, as a clean stop or a crash
/// left it.
std::vector<std::string> progress_files(const std::string& id)
{
    return {progress_name(id), checkpoint_file_name(id), intent_log_file_name(id)};
}

/// A job that only reports why it could not come back: it fails at once and stays concluded
/// (auto-dismiss off) until job-dismiss.
class failed_restore final : public jobs::job_driver {
public:
    failed_restore(std::string why, int error_code) : why_(std::move(why)), errno_(error_code) {}
    asio::awaitable<qapi::result<void>> run(jobs::job& j) override
    {
        j.set_error_errno(errno_);
        co_return qapi::generic(why_);
    }

private:
    std::string why_;
    int errno_;
};

void collect_files(const json::value& v, std::vector<std::string>& out)
{
    if (v.is_object()) {
        const auto& o = v.as_object();
        auto* drv = o.if_contains("driver");
        auto* fn = o.if_contains("filename");
        if (drv && drv->is_string() && (drv->as_string() == "file" || drv->as_string() == "host_device") && fn &&
            fn->is_string())
            out.emplace_back(fn->as_string());
        for (const auto& kv : o)
            collect_files(kv.value(), out);
    } else if (v.is_array()) {
        for (const auto& e : v.as_array())
            collect_files(e, out);
    }
}

std::vector<std::string> job_files(const json::object& doc)
{
    std::vector<std::string> out;
    if (auto* n = doc.if_contains("nodes"))
        out = definition_files(*n);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

} // namespace

std::vector<std::string> definition_files(const json::value& def)
{
    std::vector<std::string> out;
    collect_files(def, out);
    return out;
}

state_dir::state_dir(std::string dir) : dir_(std::move(dir))
{
    if (dir_.empty())
        throw std::runtime_error("--state-dir: empty directory name");
    struct stat st {};
    if (::stat(dir_.c_str(), &st) != 0) {
        if (errno != ENOENT || ::mkdir(dir_.c_str(), 0700) != 0)
            throw std::runtime_error("--state-dir '" + dir_ + "': " + std::strerror(errno));
    } else if (!S_ISDIR(st.st_mode)) {
        throw std::runtime_error("--state-dir '" + dir_ + "': not a directory");
    }
    if (const char* k = std::getenv("BJD_TEST_KILL_AT_JOB_END"))
        kill_at_end_ = k;
}

// ---- node definitions ------------------------------------------------------------------------

void state_dir::remember_node(const std::string& name, json::object def)
{
    nodes_[name] = node_def{next_seq_++, std::move(def)};
}

void state_dir::forget_node(const std::string& name) { nodes_.erase(name); }

const json::object* state_dir::node_definition(const std::string& name) const
{
    auto it = nodes_.find(name);
    return it == nodes_.end() ? nullptr : &it->second.def;
}

// ---- job lifecycle ---------------------------------------------------------------------------

void state_dir::job_started(context& ctx, const std::string& id, const std::string& command,
                            const json::object& args)
{
    auto j = ctx.jobs->find(id);
    if (!j)
        return;
    // The monitor-owned nodes below the source and the target (the filter the job inserted
    // sits above the source); the others come back with the node that opened them.
    auto src = ctx.graph->lookup(std::string(args.at("device").as_string()));
    auto tgt = ctx.graph->lookup(std::string(args.at("target").as_string()));
    if (!src || !tgt)
        return;
    std::vector<const block::node*> seen;
    std::vector<std::pair<std::uint64_t, std::string>> needed;
    std::string missing;
    std::function<void(const block::node&)> walk = [&](const block::node& n) {
        if (std::find(seen.begin(), seen.end(), &n) != seen.end())
            return;
        seen.push_back(&n);
        if (n.monitor_owned()) {
            auto it = nodes_.find(n.name());
            if (it == nodes_.end())
                missing = n.name();
            else
                needed.emplace_back(it->second.seq, n.name());
        }
        for (const auto& e : n.children())
            if (e->get())
                walk(*e->get());
    };
    walk(**src);
    walk(**tgt);
    if (!missing.empty()) {
        logger()->warn("job '{}' is not kept in the state directory: node '{}' was not added with blockdev-add", id,
                       missing);
        return;
    }
    std::sort(needed.begin(), needed.end());   // the order they were added in
    json::array nodes;
    for (const auto& [seq, name] : needed)
        nodes.push_back(nodes_.at(name).def);
    kept k;
    k.generation = jobs::random_generation();
    k.doc["format"] = "blockjobd-job";
    k.doc["version"] = format_version;
    k.doc["job-id"] = id;
    k.doc["command"] = command;
    k.doc["arguments"] = args;
    k.doc["nodes"] = std::move(nodes);
    write_definition(id, k);
    start_journal(*j, id, k);
    jobs_[id] = std::move(k);
}

void state_dir::start_journal(jobs::job& j, const std::string& id, const kept& k)
{
    jobs::mirror_journal_config c;
    c.dir = dir_;
    c.job_id = id;
    c.generation = k.generation;
    c.files = job_files(k.doc);
    if (auto r = jobs::start_mirror_journal(j, std::move(c)); !r)
        logger()->warn("job '{}': no write-intent log: {}", id, r.error().desc);
}

void state_dir::write_definition(const std::string& id, const kept& k)
{
    json::object doc = k.doc;
    doc["generation"] = k.generation;
    auto r = jobs::write_file_atomic(dir_, def_name(id), json::serialize(doc) + "\n");
    if (!r)
        logger()->error("job '{}': cannot save its definition: {}", id, r.error().desc);
    else
        logger()->info("job '{}': definition saved in {}", id, dir_);
}

qapi::result<void> state_dir::forget_job(const std::string& id)
{
    // The definition first: without it nothing brings the job back.
    auto names = progress_files(id);
    names.insert(names.begin(), def_name(id));
    auto r = jobs::remove_files_durable(dir_, names);
    if (!r) {
        logger()->error("job '{}': {}", id, r.error().desc);
        return r;
    }
    jobs_.erase(id);
    keep_until_dismissed_.erase(id);
    saved_.erase(id);
    return {};
}

void state_dir::job_status(const jobs::job& j, jobs::job_status s)
{
    if (stopping_ || !jobs_.count(j.id()))
        return;
    // A failed restore stays until job-dismiss, so that a restart in between shows it again.
    // Other jobs normally went in job_ending already.
    const bool ended = s == jobs::job_status::null ||
                       (s == jobs::job_status::concluded && !keep_until_dismissed_.count(j.id()));
    if (!ended)
        return;
    logger()->info("job '{}' ended: its state is removed", j.id());
    (void)forget_job(j.id());
}

qapi::result<void> state_dir::job_ending(jobs::job& j, bool success)
{
    const std::string id = j.id();
    if (!jobs_.count(id) || keep_until_dismissed_.count(id))
        return {};
    // A clean stop cancels its jobs and keeps their files for the restart. A job that
    // succeeds meanwhile (it would pivot) is not one to bring back.
    if (stopping_ && !success)
        return {};
    // No checkpoint may appear once the files are gone.
    jobs::stop_mirror_journal(j);
    if (auto r = forget_job(id); !r) {
        if (!success)
            return r;
        return qapi::generic("cannot remove the job's state from the state directory (" + r.error().desc +
                             "): a crash would bring the old mirror back, so the job fails instead of completing");
    }
    logger()->info("job '{}' ends ({}): its state is removed", id, success ? "success" : "failed or cancelled");
    if (!kill_at_end_.empty() && kill_at_end_ == id) {
        logger()->warn("BJD_TEST_KILL_AT_JOB_END={}: the daemon kills itself before the job's end takes effect", id);
        logger()->flush();
        ::raise(SIGKILL);
    }
    return {};
}

// ---- stop ------------------------------------------------------------------------------------

asio::awaitable<void> state_dir::save_all(context& ctx)
{
    stopping_ = true;
    // A job may end while another one's progress is taken (job_ending): look each one up.
    for (const auto& id : kept_jobs()) {
        auto kit = jobs_.find(id);
        if (kit == jobs_.end() || keep_until_dismissed_.count(id))
            continue;
        kept& k = kit->second;
        auto j = ctx.jobs->find(id);
        if (!j)
            continue;
        // A set-speed since the start holds after the restart too.
        if (auto* a = k.doc["arguments"].if_object()) {
            (*a)["speed"] = j->speed();
            write_definition(id, k);
        }
        auto p = co_await jobs::save_mirror_progress(*j);
        if (!jobs_.count(id))
            continue;   // it ended meanwhile: its files went
        if (!p) {
            logger()->warn("job '{}': progress not saved ({}): the next start copies everything", id, p.error().desc);
            (void)jobs::remove_files_durable(dir_, progress_files(id));
            continue;
        }
        p->generation = k.generation;
        logger()->info("job '{}': paused for the restart, {} of {} bytes done, {} bytes left", id, p->offset, p->len,
                       p->dirty_bytes());
        saved_[id] = std::move(*p);
    }
}

void state_dir::finish_shutdown()
{
    for (auto& [id, p] : saved_) {
        auto it = jobs_.find(id);
        if (it == jobs_.end())
            continue;
        p.files.clear();
        bool ok = true;
        for (const auto& f : job_files(it->second.doc)) {
            auto idn = jobs::identify_file(f);
            if (!idn) {
                logger()->warn("job '{}': {}: progress not saved", id, idn.error().desc);
                ok = false;
                break;
            }
            p.files.push_back(*idn);
        }
        if (!ok)
            continue;
        if (auto r = jobs::write_file_atomic(dir_, progress_name(id), jobs::encode_progress(p)); !r)
            logger()->error("job '{}': cannot save its progress: {}", id, r.error().desc);
        else
            logger()->info("job '{}': progress saved ({} bytes left to copy)", id, p.dirty_bytes());
    }
    saved_.clear();
}

// ---- start -----------------------------------------------------------------------------------

void state_dir::load()
{
    DIR* d = ::opendir(dir_.c_str());
    if (!d)
        throw std::runtime_error("--state-dir '" + dir_ + "': " + std::strerror(errno));
    std::vector<std::string> ids;
    while (auto* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n.size() > def_suffix.size() && n.ends_with(def_suffix) && n[0] != '.')
            ids.push_back(n.substr(0, n.size() - def_suffix.size()));
    }
    ::closedir(d);
    std::sort(ids.begin(), ids.end());
    for (const auto& id : ids) {
        const std::string path = dir_ + "/" + def_name(id);
        auto text = jobs::read_file(path);
        boost::system::error_code ec;
        json::value v = text ? json::parse(*text, ec) : json::value();
        const json::object* o = v.if_object();
        const json::value* gen = o ? o->if_contains("generation") : nullptr;
        const json::value* args = o ? o->if_contains("arguments") : nullptr;
        const json::value* cmd = o ? o->if_contains("command") : nullptr;
        if (!text || ec || !o || !gen || !gen->is_string() || !args || !args->is_object() || !cmd ||
            !cmd->is_string() || cmd->as_string() != "blockdev-mirror" || !o->if_contains("nodes") || !o->at("nodes").is_array()) {
            // Nothing to rebuild the job from: say so, and keep the file for a person to read.
            logger()->error("state directory: '{}' is not a usable job definition; job '{}' is not restored", path, id);
            continue;
        }
        loaded l;
        l.doc = *o;
        l.generation = std::string(gen->as_string());
        // Each image's identity now, before anything opens it (opening may write a header).
        std::vector<jobs::file_identity> now;
        for (const auto& f : job_files(l.doc)) {
            auto idn = jobs::identify_file(f);
            if (!idn) {
                l.gone = idn.error().desc;
                break;
            }
            now.push_back(*idn);
        }
        auto bytes = jobs::read_file(dir_ + "/" + progress_name(id));
        if (!bytes) {
            load_after_crash(id, l, now);
        } else if (auto p = jobs::decode_progress(*bytes, l.generation); !p) {
            l.progress_problem = p.error().desc;
        } else {
            l.progress = std::move(*p);
            for (const auto& f : now) {
                auto it = std::find_if(l.progress->files.begin(), l.progress->files.end(),
                                       [&](const jobs::file_identity& s) { return s.path == f.path; });
                if (it == l.progress->files.end()) {
                    l.progress_problem = "'" + f.path + "' is not in the saved progress";
                } else if (!(*it == f)) {
                    l.progress_problem = "'" + f.path + "' changed while the daemon was down (" +
                                         (it->size != f.size ? "size" : it->ino != f.ino || it->dev != f.dev
                                                                            ? "inode" : "modification time") +
                                         ")";
                }
                if (!l.progress_problem.empty()) {
                    l.progress.reset();
                    break;
                }
            }
        }
        loaded_[id] = std::move(l);
    }
}

void state_dir::load_after_crash(const std::string& id, loaded& l, const std::vector<jobs::file_identity>& now)
{
    // No clean stop: the last checkpoint plus what the write-intent log marked since.
    auto ckpt = jobs::read_file(dir_ + "/" + checkpoint_file_name(id));
    if (!ckpt) {
        l.progress_problem = "no saved progress and no checkpoint (the daemon did not stop cleanly before the job "
                             "finished its initial scan)";
        return;
    }
    auto p = jobs::decode_progress(*ckpt, l.generation);
    if (!p) {
        l.progress_problem = "checkpoint: " + p.error().desc;
        return;
    }
    auto wil = jobs::read_file(dir_ + "/" + intent_log_file_name(id));
    if (!wil) {
        l.progress_problem = "a checkpoint but no write-intent log: " + wil.error().desc;
        return;
    }
    auto log = jobs::decode_intent_log(*wil, l.generation);
    if (!log) {
        l.progress_problem = log.error().desc;
        return;
    }
    // Our own writes changed the images' sizes and times since the checkpoint; that they are
    // still the same files is what can be checked.
    for (const auto& f : now) {
        auto it = std::find_if(p->files.begin(), p->files.end(),
                               [&](const jobs::file_identity& s) { return s.path == f.path; });
        if (it == p->files.end()) {
            l.progress_problem = "'" + f.path + "' is not in the checkpoint";
            return;
        }
        if (it->ino != f.ino || it->dev != f.dev) {
            l.progress_problem = "'" + f.path + "' was replaced while the daemon was down (inode)";
            return;
        }
    }
    const std::uint64_t ckpt_left = p->dirty_bytes();
    if (auto m = jobs::merge_intent(*p, *log); !m) {
        l.progress_problem = m.error().desc;
        return;
    }
    l.progress = std::move(*p);
    l.note = "after a crash: " + std::to_string(l.progress->dirty_bytes()) +
             " bytes left to copy (checkpoint + write-intent log)";
    logger()->info("job '{}': the daemon did not stop cleanly: checkpoint with {} bytes left, {} regions of {} MiB "
                   "marked in the write-intent log",
                   id, ckpt_left, log->marked(), log->region >> 20);
}

void state_dir::fail_job(context& ctx, const std::string& id, const std::string& why, int error_code)
{
    logger()->error("job '{}' cannot be restored: {}", id, why);
    jobs::job_options o{.auto_finalize = true, .auto_dismiss = false};
    auto j = ctx.jobs->create(id, jobs::job_type::mirror, std::make_unique<failed_restore>(why, error_code), o);
    if (!j) {
        logger()->error("job '{}': {}", id, j.error().desc);
        return;
    }
    (*j)->set_restore_note("not restored: " + why);
    keep_until_dismissed_.insert(id);
    ctx.jobs->start(**j);
}

asio::awaitable<void> state_dir::restore(context& ctx, bool resume)
{
    co_await restore_nodes(ctx);
    co_await restore_jobs(ctx, resume);
}

bool state_dir::will_restore_node(const std::string& name) const
{
    for (const auto& [id, l] : loaded_) {
        if (!l.gone.empty() || l.nodes_done)
            continue;
        for (const auto& nv : l.doc.at("nodes").as_array()) {
            const json::object* def = nv.if_object();
            const json::value* n = def ? def->if_contains("node-name") : nullptr;
            if (n && n->is_string() && n->as_string() == name)
                return true;
        }
    }
    return false;
}

asio::awaitable<void> state_dir::restore_nodes(context& ctx)
{
    for (auto& [id, l] : loaded_)
        if (!l.nodes_done)
            co_await restore_nodes_of(ctx, id, l);
}

asio::awaitable<void> state_dir::restore_jobs(context& ctx, bool resume)
{
    for (auto& [id, l] : loaded_) {
        if (!l.nodes_done)
            co_await restore_nodes_of(ctx, id, l);
        co_await restore_one(ctx, id, l, resume);
    }
    loaded_.clear();
}

namespace {

/// An image lock refusal ("Failed to get "write" lock", see lib/block/src/image_lock.cpp).
bool lock_refused(const qapi::error& e) { return e.desc.starts_with("Failed to get "); }

/// `attempt()` (an awaitable qapi::result), tried again for a few seconds while it is refused
/// an image lock. After kill -9 the previous instance's files, and their locks, outlive it
/// until the kernel has finished its io_uring requests, so systemd's restart can find them
/// still held for a moment. `after_refusal()` runs after each refused attempt; a process that
/// keeps the lock is still refused, after the wait.
template <class Attempt, class Cleanup>
std::invoke_result_t<Attempt> waiting_for_locks(Attempt attempt, Cleanup after_refusal, std::string what)
{
    using namespace std::chrono_literals;
    constexpr auto pause = 250ms;
    constexpr int tries = 20;   // 5 s in all
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (int i = 1;; ++i) {
        auto r = co_await attempt();
        if (r || i == tries || !lock_refused(r.error()))
            co_return r;
        after_refusal();
        if (i == 1)
            logger()->warn("{}: {}; waiting up to {} s for the image's previous user to exit", what,
                           r.error().desc, std::chrono::duration_cast<std::chrono::seconds>(pause * tries).count());
        timer.expires_after(pause);
        co_await timer.async_wait(asio::use_awaitable);
    }
}

} // namespace

asio::awaitable<void> state_dir::restore_nodes_of(context& ctx, const std::string& id, loaded& l)
{
    kept k;
    k.doc = l.doc;
    k.doc.erase("generation");
    // From here on, the job's files are this instance's: a new generation, so that a progress
    // file left from before can never be taken for this run's.
    k.generation = jobs::random_generation();
    jobs_[id] = k;
    write_definition(id, k);
    (void)jobs::remove_files_durable(dir_, progress_files(id));

    l.nodes_done = true;
    if (!l.gone.empty()) {
        l.failure = "image gone: " + l.gone;
        co_return;
    }
    // The nodes: the command line's when identical, else added from the saved definitions.
    for (const auto& nv : l.doc.at("nodes").as_array()) {
        const json::object* def = nv.if_object();
        const json::value* name = def ? def->if_contains("node-name") : nullptr;
        if (!name || !name->is_string()) {
            l.failure = "a saved node definition has no node-name";
            co_return;
        }
        const std::string n(name->as_string());
        if (ctx.graph->find(n)) {
            const json::object* have = node_definition(n);
            if (!have || *have != *def) {
                l.failure = "node '" + n + "' exists with a definition other than the saved one";
                co_return;
            }
            continue;
        }
        auto opts = qapi::decode<qapi::blockdev_options>(nv);
        if (!opts) {
            l.failure = "node '" + n + "': " + opts.error().desc;
            co_return;
        }
        auto added = co_await waiting_for_locks([&] { return ctx.graph->add(*opts); }, [] {}, "node '" + n + "'");
        if (!added) {
            l.failure = "cannot reopen node '" + n + "': " + added.error().desc;
            co_return;
        }
        remember_node(n, *def);
    }
}

asio::awaitable<void> state_dir::restore_one(context& ctx, const std::string& id, loaded& l, bool resume)
{
    if (!l.failure.empty()) {
        fail_job(ctx, id, l.failure);
        co_return;
    }
    auto args = qapi::decode<qapi::blockdev_mirror_args>(l.doc.at("arguments"));
    if (!args) {
        fail_job(ctx, id, "saved arguments: " + args.error().desc);
        co_return;
    }
    jobs::mirror_params p = qapi::blockdev_mirror_params_of(*args);
    p.start_paused = !resume;
    if (l.progress) {
        jobs::mirror_resume r;
        r.bitmap = l.progress->bitmap;
        r.granularity = l.progress->granularity;
        r.size = l.progress->size;
        r.offset = l.progress->offset;
        // The granularity it ran with (the default depends on the target).
        p.granularity = static_cast<std::uint32_t>(l.progress->granularity);
        p.restore_note = !l.note.empty() ? l.note
                                         : "saved progress: " + std::to_string(l.progress->dirty_bytes()) +
                                               " bytes left to copy";
        p.resume = std::move(r);
    } else {
        p.restore_note = "full copy: " + l.progress_problem;
        logger()->warn("job '{}': restarts as a full copy: {}", id, l.progress_problem);
    }
    const kept k = jobs_.at(id);
    // A job that failed to start took its files with it: kept again, to retry or to stay as a
    // failed restore.
    auto r = co_await waiting_for_locks(
        [&] { return jobs::co_start_mirror(*ctx.jobs, *ctx.graph, p); },
        [&] {
            jobs_[id] = k;
            write_definition(id, k);
        },
        "job '" + id + "'");
    if (!r) {
        jobs_[id] = k;
        write_definition(id, k);
        fail_job(ctx, id, r.error().desc, lock_refused(r.error()) ? EAGAIN : ENOENT);
        co_return;
    }
    if (auto j = ctx.jobs->find(id))
        start_journal(*j, id, jobs_.at(id));
    logger()->info("job '{}' restored ({}), {}", id, *p.restore_note, resume ? "resumed" : "paused");
}

std::vector<std::string> state_dir::kept_jobs() const
{
    std::vector<std::string> out;
    for (const auto& [id, k] : jobs_)
        out.push_back(id);
    return out;
}

} // namespace bjd::qmp
