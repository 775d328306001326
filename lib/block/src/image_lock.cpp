// SPDX-License-Identifier: MIT
#include "image_lock.hpp"

#include <fcntl.h>

#include <array>
#include <string>

namespace bjd::block::detail {

namespace {

constexpr off_t lock_perm_base = 100;
constexpr off_t lock_shared_base = 200;
constexpr std::array<const char*, 4> perm_names{"consistent read", "write", "write unchanged", "resize"};

bool lock_held_by_other(int fd, off_t byte)
{
    struct flock fl{};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    if (::fcntl(fd, F_OFD_GETLK, &fl) == -1)
        return false;
    return fl.l_type != F_UNLCK;
}

bool set_lock(int fd, off_t byte, bool locked)
{
    struct flock fl{};
    fl.l_type = locked ? F_RDLCK : F_UNLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    return ::fcntl(fd, F_OFD_SETLK, &fl) == 0;
}

} // namespace

qapi::result<void> check_image_locks(int fd, unsigned perm, unsigned shared, std::string_view filename)
{
    const std::string hint = "Is another process using the image [" + std::string(filename) + "]?";
    for (unsigned i = 0; i < perm_names.size(); ++i) {
        if ((perm & (1u << i)) && lock_held_by_other(fd, lock_shared_base + i))
            return qapi::error{qapi::error_class::generic_error,
                               std::string("Failed to get \"") + perm_names[i] + "\" lock",
                               hint};
    }
    for (unsigned i = 0; i < perm_names.size(); ++i) {
        if (!(shared & (1u << i)) && lock_held_by_other(fd, lock_perm_base + i))
            return qapi::error{qapi::error_class::generic_error,
                               std::string("Failed to get shared \"") + perm_names[i] + "\" lock",
                               hint};
    }
    return {};
}

qapi::result<void> hold_image_locks(int fd, unsigned perm, unsigned shared)
{
    for (unsigned i = 0; i < perm_names.size(); ++i) {
        if (!set_lock(fd, lock_perm_base + i, perm & (1u << i)))
            return qapi::generic("Failed to lock byte " + std::to_string(lock_perm_base + i));
        if (!set_lock(fd, lock_shared_base + i, !(shared & (1u << i))))
            return qapi::generic("Failed to lock byte " + std::to_string(lock_shared_base + i));
    }
    return {};
}

qapi::result<void> apply_image_locks(int fd, unsigned perm, unsigned shared, std::string_view filename)
{
    if (auto r = check_image_locks(fd, perm, shared, filename); !r)
        return r;
    return hold_image_locks(fd, perm, shared);
}

} // namespace bjd::block::detail
