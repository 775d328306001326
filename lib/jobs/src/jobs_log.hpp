// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The logger of the job implementations in this folder.
#include "bjd/log.hpp"

namespace bjd::jobs {

/// The "jobs" module logger (bjd/log.hpp).
inline std::shared_ptr<spdlog::logger> logger() { return log::get("jobs"); }

} // namespace bjd::jobs
