// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// One spdlog logger per module ("io", "block", "jobs", "qmp", "nbd", "stats", "daemon").
/// Loggers are created on first use with the process-wide sink set by `init_logging`.
#include <spdlog/spdlog.h>

#include <exception>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>

namespace bjd::log {

/// Where log lines go. `journal` prints `<N>` syslog priority prefixes (sd-daemon(3)),
/// which systemd-journald turns into priorities; `terminal` is a plain timestamped format.
enum class style { terminal, journal };

/// Sets the level and format for every module logger (existing and future). Thread-safe;
/// call once at startup before other threads exist.
void init_logging(spdlog::level::level_enum level, style s);

/// SIGHUP: reopens what can be reopened and says what that was, for the log line. blockjobd
/// writes to stderr (a terminal, a file the caller redirected, or the journal stream
/// systemd passes) and, in journal style, to journald's native socket: stderr is flushed
/// (its file is the caller's to rotate, with copytruncate) and journald's socket is looked
/// for again, so a journald that came up after the daemon gets the structured entries.
std::string reopen();

/// The named module logger. Never null; safe from any thread.
std::shared_ptr<spdlog::logger> get(const std::string& module);

/// A completion handler for `asio::co_spawn`: an exception that escaped the coroutine is
/// logged as "WHAT failed: <what()>" on `module` at `level`, never lost or fatal.
///
///     asio::co_spawn(ex, run(conn), log::on_failure("nbd", "nbd connection"));
///
/// Both names are string literals (the constructor is consteval, so nothing else compiles):
/// the handler is copied and moved on every spawn, one per NBD request, and views of static
/// strings make that free.
class on_failure {
public:
    consteval on_failure(std::string_view module, std::string_view what,
                         spdlog::level::level_enum level = spdlog::level::err)
        : module_(module), what_(what), level_(level)
    {
    }
    void operator()(std::exception_ptr e) const;

private:
    std::string_view module_;
    std::string_view what_;
    spdlog::level::level_enum level_;
};

/// A structured field of a log line: NAME is a journald field name (upper case, e.g.
/// JOB_ID, NODE, IO_STATUS).
struct field {
    std::string_view name;
    std::string_view value;
};

/// Logs `text` on `module`'s logger with structured fields, so operators can filter a job's
/// or a node's lines: `journalctl JOB_ID=mirror0`. In journal style the entry goes to
/// journald natively (sd_journal_send) with the fields attached if journald's socket existed
/// at init_logging, else to the stream like any line; in terminal style the fields are appended as `[NAME=value]`.
///
///     log::with_fields(spdlog::level::info, "jobs", "job 'm0': running -> ready",
///                      {{"JOB_ID", "m0"}, {"JOB_STATUS", "ready"}});
void with_fields(spdlog::level::level_enum level, const std::string& module, std::string_view text,
                 std::initializer_list<field> fields);

} // namespace bjd::log
