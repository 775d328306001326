// SPDX-License-Identifier: MIT
#pragma once
// Command line: qemu-storage-daemon's options, in order, plus blockjobd's own.
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
};

/// Parses argv. Prints --help / --version itself and exits 0; on a usage error prints the reason
/// to stderr and exits 1 (QEMU's behaviour).
options parse_options(int argc, char** argv);

/// The --help text (also the source of truth the man page test compares with).
const char* usage_text();

} // namespace bjd::daemon
