// SPDX-License-Identifier: MIT
#pragma once
// QEMU-compatible image locks on a file descriptor (private to lib/block).
#include "bjd/qapi/error.hpp"

#include <string_view>

namespace bjd::block::detail {

/// QEMU's image locking (file-posix.c), so that QEMU, qemu-img and blockjobd see each other:
/// one OFD byte lock per permission bit at 100 + bit ("I hold it") and 200 + bit ("I do not
/// share it"). Checks for conflicts first ("Failed to get \"write\" lock", "Failed to get
/// shared \"write\" lock", with a hint naming `filename`), then holds exactly the bytes for
/// `perm` and `~shared`, releasing the others.
qapi::result<void> apply_image_locks(int fd, unsigned perm, unsigned shared, std::string_view filename);

} // namespace bjd::block::detail
