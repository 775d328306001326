// SPDX-License-Identifier: MIT
#pragma once
// Command line: qemu-storage-daemon's options, in order, plus blockjobd's own.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace bjd::daemon {

/// One object-creating option, kept in command-line order (QEMU processes them in order, so
/// `--export` may name a node created by an earlier `--blockdev`).
struct ordered_option {
    enum class kind { blockdev, chardev, monitor, nbd_server, export_, object, drive } what;
    std::string value;
};

/// --poll-max-ns when it is not given: long enough to catch the next request of a client at
/// queue depth 1 on a virtual machine, where a wake-up costs 30-60 us (docs/polling.md).
inline constexpr std::int64_t default_poll_max_ns = 128000;

struct options {
    std::vector<ordered_option> objects;
    std::optional<std::string> pidfile;
    bool daemonize = false;
    std::string log_level = "info";
    std::optional<std::string> metrics;      ///< --metrics unix:PATH | tcp:HOST:PORT
    std::optional<std::string> log_format;   ///< terminal | journal; default: journal under systemd
    std::optional<std::string> state_dir;    ///< --state-dir: mirror jobs kept across restarts
    bool resume_jobs = false;                ///< --resume-jobs: restored jobs resume at once
    std::optional<unsigned> nbd_threads;     ///< --nbd-threads: NBD worker loops
    std::optional<std::int64_t> poll_max_ns; ///< --poll-max-ns: the event loops' polling (docs/polling.md)
    bool poll_probe = true;                  ///< --poll-probe: measure whether polling pays
    unsigned poll_queued = 0;                ///< --poll-queued: poll while clients wait on this many requests
};

/// Parses argv. Prints --help / --version itself and exits 0; on a usage error prints the reason
/// to stderr and exits 1 (QEMU's behaviour).
options parse_options(int argc, char** argv);

/// The --help text (also the source of truth the man page test compares with).
const char* usage_text();

} // namespace bjd::daemon
