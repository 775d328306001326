// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// drive-backup's target image: created (unless mode=existing) and opened as a node of the
/// graph without a node-name.
#include "bjd/jobs/backup.hpp"

#include <memory>

namespace bjd::block { class node; }

namespace bjd::jobs::detail {

/// Creates and opens the target of `d` and points `d.backup.target` at it; sync=top without
/// a backing image becomes sync=full, as in QEMU. The caller closes the node once the job
/// lets it go, or at once when the job is not created. Errors: the device lookup, the
/// source's op blockers, the image creation and open errors, "drive-backup target format
/// 'F' is not supported (only raw and qcow2)".
asio::awaitable<qapi::result<std::shared_ptr<block::node>>> open_drive_backup_target(block::graph& g,
                                                                                    drive_backup_params& d);

} // namespace bjd::jobs::detail
