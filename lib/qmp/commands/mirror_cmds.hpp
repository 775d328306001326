// SPDX-License-Identifier: MIT
#pragma once
// blockdev-mirror's arguments as lib/jobs takes them, shared with the --state-dir restore.
#include "bjd/jobs/mirror.hpp"
#include "bjd/qapi/commands.hpp"

namespace bjd::qapi {

/// blockdev-mirror's arguments, defaults left to lib/jobs.
jobs::mirror_params blockdev_mirror_params_of(const blockdev_mirror_args& args);

} // namespace bjd::qapi
