// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Small file helpers shared by modules that read whole files (secrets, saved job state).
#include "bjd/result.hpp"

#include <string>

namespace bjd {

/// Everything from `fd`'s position to its end (reads retried on EINTR). The caller opens and
/// closes the descriptor, and words the errors as its users expect them.
result<std::string> read_to_end(int fd);

} // namespace bjd
