// SPDX-License-Identifier: MIT
#pragma once
// The arguments of blockdev-backup and drive-backup, shared with their transaction actions.
#include "bjd/jobs/backup.hpp"
#include "bjd/qapi/commands.hpp"

namespace bjd::qapi {

/// Takes the strings out of `args`.
jobs::backup_params backup_params_of(blockdev_backup& args);
jobs::drive_backup_params drive_backup_params_of(drive_backup& args);

} // namespace bjd::qapi
