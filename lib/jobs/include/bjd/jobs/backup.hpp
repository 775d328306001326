// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// blockdev-backup (`virsh backup-begin`): a point-in-time copy of a node into a target of the
/// same size, kept consistent by a copy-before-write filter above the source. Checks, texts
/// and events are QEMU 7.2's (blockdev.c do_backup_common, block/backup.c).
#include "bjd/jobs/job.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace bjd::block {
class graph;
class transaction_action;
} // namespace bjd::block

namespace bjd::jobs {

/// blockdev-backup's arguments, as on the wire.
struct backup_params {
    std::optional<std::string> job_id;
    std::string device;
    std::string target;
    qapi::mirror_sync_mode sync = qapi::mirror_sync_mode::full;
    std::int64_t speed = 0;
    std::optional<std::string> bitmap;
    std::optional<qapi::bitmap_sync_mode> bitmap_mode;
    bool compress = false;
    qapi::blockdev_on_error on_source_error = qapi::blockdev_on_error::report;
    qapi::blockdev_on_error on_target_error = qapi::blockdev_on_error::report;
    std::optional<std::string> filter_node_name;
    bool auto_finalize = true;
    bool auto_dismiss = true;
    std::optional<std::int64_t> max_workers;
    std::optional<std::int64_t> max_chunk;
};

/// drive-backup's arguments: `backup.target` is the image's file name.
struct drive_backup_params {
    backup_params backup;
    std::string target;
    std::optional<std::string> format;
    qapi::new_image_mode mode = qapi::new_image_mode::absolute_paths;
};

/// Checks `p` in QEMU 7.2's order, puts the copy-before-write filter above the source,
/// creates the job and starts it. Main loop only; returns before any data is copied.
asio::awaitable<qapi::result<void>> start_backup(manager& m, block::graph& g, const backup_params& p);

/// blockdev-backup as a `transaction` action (QEMU's blockdev_backup_prepare/commit/abort):
/// prepare makes the checks and creates the job with its filter, commit starts it, abort
/// cancels the job that never ran. `txn`: the jobs of a grouped transaction, else null.
std::unique_ptr<block::transaction_action> backup_action(manager& m, block::graph& g, backup_params p,
                                                         std::shared_ptr<job_txn> txn);

/// drive-backup (deprecated in QEMU 6.2): creates or opens the target image, then does what
/// blockdev-backup does. The target node goes away with the job.
asio::awaitable<qapi::result<void>> start_drive_backup(manager& m, block::graph& g, const drive_backup_params& p);
/// drive-backup as a `transaction` action.
std::unique_ptr<block::transaction_action> drive_backup_action(manager& m, block::graph& g, drive_backup_params p,
                                                               std::shared_ptr<job_txn> txn);

} // namespace bjd::jobs
