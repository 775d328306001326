// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// What a QMP command handler can reach: the daemon's subsystems and the calling session.
///
/// Handlers (lib/qmp/commands/*_cmds.cpp) are glue: decode (generated), call the library
/// through this context, encode (generated). One context lives as long as the daemon; the
/// `session` pointer is set for the duration of each command.
#include "bjd/qapi/event_sink.hpp"

#include <boost/asio/io_context.hpp>

#include <functional>
#include <string>

namespace bjd::io { class poll_loop; }
namespace bjd::block { class graph; }
namespace bjd::jobs { class manager; }
namespace bjd::exports { class manager; }
namespace bjd::chardev { class registry; }
namespace bjd::crypto { class registry; }

namespace bjd::qmp {

class session;
class state_dir;

/// How the daemon's I/O engine came up; `query-...` commands and logs report it.
struct io_report {
    std::string backend;          ///< "io_uring" or "threads"
    std::string fallback_reason;  ///< non-empty when io_uring was wanted but could not be used
    bool huge_pages = false;      ///< large I/O buffers on transparent huge pages (io/huge_pages.hpp)
};

class context {
public:
    /// Subsystems are attached afterwards by the daemon (or left null by tests).
    context(boost::asio::io_context& l, qapi::event_sink& e) : loop(l), events(e) {}

    boost::asio::io_context& loop;
    qapi::event_sink& events;
    block::graph* graph = nullptr;
    jobs::manager* jobs = nullptr;
    exports::manager* exports = nullptr;   ///< NBD server and block exports (lib/export)
    chardev::registry* chardevs = nullptr; ///< ring buffers and monitor sockets (lib/chardev)
    crypto::registry* objects = nullptr;   ///< secrets, TLS credentials, authz (lib/crypto)
    io_report io;
    const io::poll_loop* main_loop = nullptr; ///< its polling, for query-iothreads; null in tests
    state_dir* state = nullptr;            ///< --state-dir (state_dir.hpp); null without it

    /// `quit`, before it answers: closes the exports and cancels the jobs, so their events
    /// (BLOCK_EXPORT_DELETED, BLOCK_JOB_CANCELLED, ...) precede quit's return, as in QEMU.
    std::function<boost::asio::awaitable<void>()> prepare_quit;

    /// Asks the daemon to shut down after the current command has answered (`quit`).
    std::function<void()> request_quit;

    /// The session running the current command (null for commands run at startup).
    session* current = nullptr;
};

} // namespace bjd::qmp
