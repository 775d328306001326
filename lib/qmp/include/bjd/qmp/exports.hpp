// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The NBD server's start, shared by QMP's nbd-server-start and the daemon's --nbd-server
/// (qemu-storage-daemon's nbd_server_start_options): both end here, so they accept the same
/// addresses and fail with the same words. --export needs no such entry point: it decodes
/// BlockExportOptions and calls qapi::qmp_block_export_add itself.
#include "bjd/qapi/error.hpp"
#include "bjd/qapi/types.hpp"

namespace bjd::qmp {

class context;

/// Starts the NBD server on `o.addr` (the flat SocketAddress; nbd-server-start converts its
/// legacy form first). Errors: "NBD server already running", the address ones (vsock, port
/// ranges, abstract sockets are refused), and the export manager's (bind, TLS objects).
qapi::result<void> start_nbd_server(context& ctx, const qapi::nbd_server_options& o);

} // namespace bjd::qmp
