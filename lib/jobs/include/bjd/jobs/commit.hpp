// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// block-commit (`virsh blockcommit`): copies an image, and the images between it and a base,
/// into the base, then takes them out of the chain. Checks, events and texts are QEMU 7.2's.
#include "bjd/jobs/job.hpp"

#include <cstdint>
#include <optional>
#include <string>

namespace bjd::block { class graph; }

namespace bjd::jobs {

/// block-commit's arguments, as on the wire.
struct commit_params {
    std::optional<std::string> job_id;
    std::string device;
    std::optional<std::string> base;          ///< a file name in the backing chain
    std::optional<std::string> base_node;
    std::optional<std::string> top;           ///< a file name in the backing chain
    std::optional<std::string> top_node;
    std::optional<std::string> backing_file;  ///< written in the overlay's header instead of the base's name
    std::int64_t speed = 0;
    qapi::blockdev_on_error on_error = qapi::blockdev_on_error::report;
    std::optional<std::string> filter_node_name;
    bool auto_finalize = true;
    bool auto_dismiss = true;
};

/// Checks `p` in QEMU 7.2's order, creates the job (JOB_STATUS_CHANGE created; null again when
/// a later check fails) and starts it. An intermediate image is copied into the base and
/// dropped from the chain when the job ends; the active layer is mirrored into the base, which
/// takes its place on block-job-complete. Main loop only; returns before any data is copied.
asio::awaitable<qapi::result<void>> start_commit(manager& m, block::graph& g, const commit_params& p);

} // namespace bjd::jobs
