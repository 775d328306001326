// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// `--state-dir`: mirror jobs that survive a restart (docs/job-state.md).
///
/// The QMP layer remembers, for every node added with blockdev-add or --blockdev, the
/// arguments it was added with (forgotten on blockdev-del). When a blockdev-mirror with a
/// job-id starts, `<id>.job.json` is written: the command's arguments and the definitions of
/// every monitor-owned node below the source and the target, in the order they were added
/// (so that a node named by reference is re-added before the node that names it), plus a
/// random generation. The file goes when the job ends.
///
/// At a clean stop (SIGTERM, `quit`) every such job is paused, its requests drain, its target
/// is flushed, and `<id>.progress` (bjd/jobs/job_state.hpp) records what is left to copy.
/// At the next start, after the command line's objects, each job comes back under its id:
/// missing nodes are re-added from their definitions, and the mirror is recreated paused,
/// carrying on from the saved bitmap, or copying everything when the saved progress cannot be
/// trusted (query-jobs' `restore-note` says why). A job whose images are gone comes back
/// concluded with an error and stays listed until job-dismiss.
///
/// While a job runs, its journal (jobs::start_mirror_journal) keeps `<id>.ckpt` and `<id>.wil`
/// for a restart after a crash; without a progress file the next start unites the two.
///
/// Main loop only. File I/O here is synchronous: the files are small (a bitmap bit per chunk).
#include "bjd/jobs/job.hpp"
#include "bjd/jobs/job_state.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>

#include <cerrno>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace bjd::qmp {

class context;

class state_dir {
public:
    /// Uses `dir`, creating it (one level, mode 0700) when missing. Throws std::runtime_error
    /// with a message for the user when it cannot.
    explicit state_dir(std::string dir);

    const std::string& path() const noexcept { return dir_; }

    // ---- node definitions -----------------------------------------------------------------
    /// A node added by blockdev-add / --blockdev, with the arguments it was given.
    void remember_node(const std::string& name, boost::json::object def);
    void forget_node(const std::string& name);
    /// What `name` was added with, or null.
    const boost::json::object* node_definition(const std::string& name) const;

    // ---- job lifecycle --------------------------------------------------------------------
    /// blockdev-mirror `id` started with `args`: writes its definition file. A node it needs
    /// that has no definition (not added with blockdev-add) is logged and the job is not kept.
    void job_started(context& ctx, const std::string& id, const std::string& command,
                     const boost::json::object& args);
    /// The manager's status listener: an ended job's files go (those of a failed restore at
    /// job-dismiss).
    void job_status(const jobs::job& j, jobs::job_status s);
    /// The manager's end hook (jobs::manager::set_end_hook): a kept job's journal stops and its
    /// files are removed durably before its outcome takes effect, so that a crash after a
    /// pivot never brings the old mirror back. On success an error fails the job instead of
    /// letting it pivot. A clean stop keeps the files of the jobs it cancels.
    qapi::result<void> job_ending(jobs::job& j, bool success);

    // ---- stop and start -------------------------------------------------------------------
    /// The clean stop, before the jobs are cancelled: pauses and drains each kept job, flushes
    /// its target and takes its progress. From here on ended jobs keep their files.
    boost::asio::awaitable<void> save_all(context& ctx);
    /// After the nodes were closed (their files are final): records the images' identity and
    /// writes the progress files.
    void finish_shutdown();
    /// Startup, before the command line's objects: reads the definition and progress files and
    /// notes each image's identity before anything opens it.
    void load();
    /// Startup, after the command line's objects: restore_nodes, then restore_jobs.
    boost::asio::awaitable<void> restore(context& ctx, bool resume);
    /// Whether a saved job will have a node named `name` added by restore_nodes (a command-line
    /// export of it waits for that).
    bool will_restore_node(const std::string& name) const;
    /// Saved jobs to bring back (load found some).
    bool has_saved_jobs() const noexcept { return !loaded_.empty(); }
    /// Startup, after the command line's nodes: each saved job's nodes, the command line's
    /// when identical to the saved definition, else added from it. A job whose nodes cannot
    /// all be had fails in restore_jobs.
    boost::asio::awaitable<void> restore_nodes(context& ctx);
    /// Then (after the exports that need those nodes) each saved job comes back under its id,
    /// paused unless `resume`.
    boost::asio::awaitable<void> restore_jobs(context& ctx, bool resume);

    /// Job ids with a definition file (tests, logs).
    std::vector<std::string> kept_jobs() const;

private:
    struct kept {
        std::string generation;
        boost::json::object doc;   ///< the definition file's content
    };
    struct loaded {
        boost::json::object doc;
        std::string generation;
        std::optional<jobs::mirror_progress> progress;
        std::string progress_problem;   ///< why `progress` is absent
        std::string note;               ///< restore note when it is not a clean stop's
        std::string gone;               ///< an image that is missing: the job cannot come back
        std::string failure;            ///< restore_nodes: why the job cannot come back
        bool nodes_done = false;        ///< restore_nodes ran for it
    };

    void write_definition(const std::string& id, const kept& k);
    /// The job's write-intent log and checkpoints (`<id>.wil`, `<id>.ckpt`).
    void start_journal(jobs::job& j, const std::string& id, const kept& k);
    /// No progress file: the checkpoint ∪ the write-intent log, or why not.
    void load_after_crash(const std::string& id, loaded& l, const std::vector<jobs::file_identity>& now);
    /// Removes the job's files durably (the definition first); the job is forgotten unless that
    /// fails.
    qapi::result<void> forget_job(const std::string& id);
    boost::asio::awaitable<void> restore_nodes_of(context& ctx, const std::string& id, loaded& l);
    boost::asio::awaitable<void> restore_one(context& ctx, const std::string& id, loaded& l, bool resume);
    /// A job that comes back concluded with `why` as its error (`error_code`: the errno that
    /// query-jobs' error-code shows: ENOENT for images gone, EAGAIN for a lock held elsewhere).
    void fail_job(context& ctx, const std::string& id, const std::string& why, int error_code = ENOENT);

    std::string dir_;
    std::uint64_t next_seq_ = 0;
    struct node_def {
        std::uint64_t seq;
        boost::json::object def;
    };
    std::map<std::string, node_def> nodes_;
    std::map<std::string, kept> jobs_;
    std::map<std::string, loaded> loaded_;
    std::map<std::string, jobs::mirror_progress> saved_;   ///< save_all → finish_shutdown
    std::set<std::string> keep_until_dismissed_;           ///< failed restores
    bool stopping_ = false;
    /// Tests only (docs/job-state.md): the job whose end kills the daemon with SIGKILL right
    /// after its files were removed, before its outcome takes effect.
    std::string kill_at_end_;
};

/// The image files a saved node definition opens (driver file / host_device `filename`,
/// inline children included).
std::vector<std::string> definition_files(const boost::json::value& def);

} // namespace bjd::qmp
