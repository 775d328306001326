// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// blockdev-backup (`virsh backup-begin`): a point-in-time copy of a node into a target of the
/// same size, kept consistent by a copy-before-write filter above the source. Checks, texts
/// and events are QEMU 7.2's (blockdev.c do_backup_common, block/backup.c).
#include "bjd/jobs/job.hpp"

#include <cstdint>
#include <optional>
#include <string>

namespace bjd::block { class graph; }

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

/// Checks `p` in QEMU 7.2's order, puts the copy-before-write filter above the source,
/// creates the job and starts it. Main loop only; returns before any data is copied.
asio::awaitable<qapi::result<void>> start_backup(manager& m, block::graph& g, const backup_params& p);

} // namespace bjd::jobs
