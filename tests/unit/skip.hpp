// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Visible skips for Catch2 v2, which has none. A test case that cannot run here (the kernel
/// refuses io_uring, no directory takes O_DIRECT, a journald owns its socket) calls skip()
/// and returns, and carries the [may-skip] tag. tests/CMakeLists.txt registers every
/// [may-skip] case as a ctest of its own, and main.cpp ends a run in which something was
/// skipped and nothing failed with exit status 77, which those ctests count as skipped:
/// the summary shows the case as skipped rather than passed.
#include <string>

namespace bjd::test {

/// Exit status of a run that skipped something and failed nothing (ctest SKIP_RETURN_CODE).
inline constexpr int skipped_exit_code = 77;

/// Records that the running test case is skipped and why (the caller returns at once).
void skip(const std::string& why);

} // namespace bjd::test
