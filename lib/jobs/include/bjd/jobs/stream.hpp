// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// block-stream (`virsh blockpull`): copies what a node reads from its backing chain, down to
/// a base, into the node itself, then makes the base its backing image, in the graph and in
/// the image header. Checks, events and texts are QEMU 7.2's.
#include "bjd/jobs/job.hpp"

#include <cstdint>
#include <optional>
#include <string>

namespace bjd::block { class graph; }

namespace bjd::jobs {

/// block-stream's arguments, as on the wire.
struct stream_params {
    std::optional<std::string> job_id;
    std::string device;
    std::optional<std::string> base;          ///< a file name in the backing chain
    std::optional<std::string> base_node;
    std::optional<std::string> backing_file;  ///< written in the header instead of the base's name
    std::optional<std::string> bottom;        ///< the lowest node to copy from
    std::int64_t speed = 0;
    qapi::blockdev_on_error on_error = qapi::blockdev_on_error::report;
    std::optional<std::string> filter_node_name;
    bool auto_finalize = true;
    bool auto_dismiss = true;
};

/// Checks `p` in QEMU 7.2's order, creates the job (JOB_STATUS_CHANGE created; null again when
/// a later check fails) and starts it. A read-only device is reopened read-write for the
/// job, and read-only again when it ends. Main loop only; returns before any data is copied.
asio::awaitable<qapi::result<void>> start_stream(manager& m, block::graph& g, const stream_params& p);

} // namespace bjd::jobs
