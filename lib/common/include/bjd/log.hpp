// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// One spdlog logger per module ("io", "block", "jobs", "qmp", "nbd", "stats", "daemon").
/// Loggers are created on first use with the process-wide sink set by `init_logging`.
#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace bjd::log {

/// Where log lines go. `journal` prints `<N>` syslog priority prefixes (sd-daemon(3)),
/// which systemd-journald turns into priorities; `terminal` is a plain timestamped format.
enum class style { terminal, journal };

/// Sets the level and format for every module logger (existing and future). Thread-safe;
/// call once at startup before other threads exist.
void init_logging(spdlog::level::level_enum level, style s);

/// The named module logger. Never null; safe from any thread.
std::shared_ptr<spdlog::logger> get(const std::string& module);

} // namespace bjd::log
