// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Data-path results: a value or the errno that explains why there is none.
///
/// Expected I/O failures are never exceptions: every data-path function returns
/// `bjd::result<T>`, built from a *positive* errno with `bjd::errno_error(e)`.
#include <boost/system/result.hpp>

#include <cerrno>
#include <string>
#include <system_error>

namespace bjd {

template <class T>
using result = boost::system::result<T, std::error_code>;

/// An error_code in the generic (POSIX errno) category.
inline std::error_code errno_error(int e) noexcept { return {e, std::generic_category()}; }

/// For the kernel's negative-errno convention (io_uring CQEs, liburing calls).
inline std::error_code neg_errno_error(int neg) noexcept { return errno_error(-neg); }

/// QEMU's wording for errors shown to users: strerror() text ("Input/output error").
std::string strerror_text(const std::error_code& ec);

/// The symbolic errno name ("EIO", "ENOSPC"), for machine-readable error fields.
std::string errno_name(const std::error_code& ec);

} // namespace bjd
