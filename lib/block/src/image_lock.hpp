// SPDX-License-Identifier: MIT
#pragma once
// QEMU-compatible image locks on a file descriptor (private to lib/block).
#include "bjd/qapi/error.hpp"

#include <string_view>

namespace bjd::block::detail {

/// QEMU's image locking (file-posix.c), so that QEMU, qemu-img and blockjobd see each other:
/// one OFD byte lock per permission bit at 100 + bit ("I hold it") and 200 + bit ("I do not
/// share it"). Locks are shared (read) locks, so any number of holders may hold a byte; a
/// conflict is another open file holding the opposite byte.

/// Whether another open file of the image stops us from taking `perm` while sharing only
/// `shared`: "Failed to get \"write\" lock", "Failed to get shared \"write\" lock", with a
/// hint naming `filename`. Our own locks on `fd` never count.
qapi::result<void> check_image_locks(int fd, unsigned perm, unsigned shared, std::string_view filename);

/// Holds exactly the bytes for `perm` and for not sharing `~shared` on `fd`, releasing the
/// others. Fails only if the kernel refuses a lock ("Failed to lock byte 100").
qapi::result<void> hold_image_locks(int fd, unsigned perm, unsigned shared);

/// `check_image_locks`, then `hold_image_locks` (blockdev-create's locks on a new file).
qapi::result<void> apply_image_locks(int fd, unsigned perm, unsigned shared, std::string_view filename);

} // namespace bjd::block::detail
