// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// librbd and librados, loaded when the first rbd node is opened or created, not when the
/// daemon starts. Linked, they made every blockjobd process map and touch about 17 MiB of
/// Ceph's libraries, nearly three times the resident memory of a daemon that never sees Ceph
/// (qemu-storage-daemon loads its rbd driver as a module for the same reason). The package
/// therefore recommends librbd1 instead of depending on it.
///
/// The headers still come from librbd-dev: every function keeps its exact C type.
#include "bjd/qapi/types.hpp"

#include <rados/librados.h>
#include <rbd/librbd.h>

namespace bjd::block::rbd_lib {

#define BJD_LIBRBD_FUNCTIONS(X)                                                                          \
    X(rados_create) X(rados_conf_read_file) X(rados_conf_set) X(rados_connect) X(rados_ioctx_create)     \
    X(rados_ioctx_set_namespace) X(rados_ioctx_destroy) X(rados_shutdown) X(rbd_namespace_exists)        \
    X(rbd_open) X(rbd_close) X(rbd_stat) X(rbd_create) X(rbd_resize) X(rbd_get_flags)                    \
    X(rbd_get_features) X(rbd_config_image_list) X(rbd_config_image_list_cleanup) X(rbd_diff_iterate2)  \
    X(rbd_aio_create_completion) X(rbd_aio_release) X(rbd_aio_get_return_value) X(rbd_aio_read)         \
    X(rbd_aio_write) X(rbd_aio_write_zeroes) X(rbd_aio_discard) X(rbd_aio_flush)

struct api {
#define BJD_LIBRBD_POINTER(name) decltype(&::name) name = nullptr;
    BJD_LIBRBD_FUNCTIONS(BJD_LIBRBD_POINTER)
#undef BJD_LIBRBD_POINTER
};

/// Loads the libraries once (thread-safe); later calls return the first outcome. The error
/// says what is missing: "rbd is not available: librbd.so.1: cannot open shared object file:
/// No such file or directory (install librbd1)".
qapi::result<const api*> load();

/// The loaded API. Only after load() succeeded: every rbd node and request comes after it.
const api& get() noexcept;

} // namespace bjd::block::rbd_lib
