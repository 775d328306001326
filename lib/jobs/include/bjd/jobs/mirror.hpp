// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Mirror jobs (blockdev-mirror, drive-mirror): argument checks in QEMU 7.2's order and texts
/// (QEMU's blockdev.c, blockdev_mirror_common), then a job that copies `device` to `target` through a dirty bitmap and, on
/// completion, replaces `device` (or `replaces`) by the target in all its parents.
#include "bjd/jobs/job.hpp"
#include "bjd/jobs/job_state.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace bjd::block { class graph; }

namespace bjd::jobs {

/// Where a mirror recreated from --state-dir starts (bjd/jobs/job_state.hpp).
struct mirror_resume {
    /// One bit per `granularity` chunk, 1 = still to copy (mirror_progress::bitmap). Used only
    /// when the job's own granularity and size match; otherwise the job copies everything
    /// and its restore note says why.
    std::vector<std::uint8_t> bitmap;
    std::uint64_t granularity = 0;
    std::uint64_t size = 0;
    std::uint64_t offset = 0;   ///< progress already made
};

/// The union of blockdev-mirror's and drive-mirror's arguments, defaults not yet applied
/// (absent and 0 mean "default", as on the wire).
struct mirror_params {
    bool drive = false;                          ///< drive-mirror: `target` is a file name
    std::optional<std::string> job_id;
    std::string device;
    std::string target;
    std::optional<std::string> replaces;
    qapi::mirror_sync_mode sync = qapi::mirror_sync_mode::full;
    std::int64_t speed = 0;
    std::uint32_t granularity = 0;
    std::int64_t buf_size = 0;
    qapi::blockdev_on_error on_source_error = qapi::blockdev_on_error::report;
    qapi::blockdev_on_error on_target_error = qapi::blockdev_on_error::report;
    std::optional<std::string> filter_node_name; ///< blockdev-mirror only
    qapi::mirror_copy_mode copy_mode = qapi::mirror_copy_mode::background;
    bool auto_finalize = true;
    bool auto_dismiss = true;
    bool unmap = true;                           ///< drive-mirror only (blockdev-mirror: true)
    std::optional<std::string> format;           ///< drive-mirror: "raw" or "qcow2"
    std::optional<std::string> node_name;        ///< drive-mirror: name of the opened target
    qapi::new_image_mode mode = qapi::new_image_mode::absolute_paths;
    bool target_is_zero = false;                 ///< blockdev-mirror (QEMU 10.1): skip zeroes
    // Restarts from --state-dir (blockjobd's): not QMP arguments.
    std::optional<mirror_resume> resume;         ///< saved progress; absent: copy as a new job
    bool start_paused = false;                   ///< user-paused before it copies anything
    std::optional<std::string> restore_note;     ///< shown by query-jobs (job::restore_note)
};

/// Checks `p`, creates the job (JOB_STATUS_CHANGE created; null again if a later check
/// fails) and starts it (running). Errors are the command's, with QEMU 7.2's texts.
/// Main loop only; returns before any data is copied.
qapi::result<void> start_mirror(manager& m, block::graph& g, const mirror_params& p);

/// As `start_mirror`, and the only entry point for drive-mirror targets in qcow2 format
/// (created with `block::create_qcow2` for mode absolute-paths, opened as they are for
/// existing): those need I/O before the job exists. Main loop only.
asio::awaitable<qapi::result<void>> co_start_mirror(manager& m, block::graph& g, const mirror_params& p);

/// A clean stop with --state-dir: pauses the mirror job `j` (internally, as a drain does),
/// waits until no request of the job is in flight, flushes the target, and returns what is
/// left to copy with the progress counters (generation and files left for the caller). The job
/// stays paused; the caller cancels it afterwards. Errors: not a mirror, already finished,
/// its initial scan not done yet (the next start copies everything), the target flush failed.
asio::awaitable<qapi::result<mirror_progress>> save_mirror_progress(job& j);

/// --state-dir after kill -9 (docs/job-state.md): where a mirror keeps its write-intent log
/// (`dir`/`<job_id>.wil`) and its periodic checkpoints (`dir`/`<job_id>.ckpt`, the progress
/// file's format), and what they are tagged with.
struct mirror_journal_config {
    std::string dir;
    std::string job_id;
    std::string generation;          ///< the definition file's
    std::vector<std::string> files;  ///< image files whose identity each checkpoint records
    std::chrono::milliseconds interval{2000};   ///< between checkpoints (and at READY)
};

/// Starts the journal of the mirror job `j`: creates the log, puts its hook on the source
/// (from then on every write to the source waits until its regions are durably marked), and
/// writes a checkpoint every `interval` once the initial scan is done, and at READY. It stops
/// when the job leaves the graph; the files stay for the caller to remove. Errors: not a mirror.
qapi::result<void> start_mirror_journal(job& j, mirror_journal_config c);
/// Stops the journal of `j` now (the log's hook leaves the source; no checkpoint is written
/// from here on), before its files are removed. No-op without one.
void stop_mirror_journal(job& j);

/// Granularity used when the caller gives 0: the target's cluster size clamped to
/// [4 KiB, 64 KiB], 64 KiB without clusters.
std::uint32_t default_granularity(std::uint32_t target_cluster_size) noexcept;

/// The most a mirror keeps in flight when buf-size is left to the daemon: it starts at 16 MiB,
/// as QEMU does, and doubles up to this while that makes the copy faster (docs/copy-window.md).
inline constexpr std::uint64_t auto_buf_size_max = std::uint64_t(64) << 20;

/// buf-size after defaults: 0 → 16 MiB, then rounded up to a multiple of `granularity`.
std::uint64_t effective_buf_size(std::int64_t buf_size, std::uint64_t granularity) noexcept;

} // namespace bjd::jobs
