// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Control-path errors: what a QMP command answers when it fails.
///
/// Follows QEMU's error.h rules: `desc` is one phrase without trailing punctuation, hints go
/// separately (they are logged, never sent), and `cls` is GenericError unless the protocol
/// demands another class. Behaviour never depends on how the caller handles the error.
#include <boost/system/result.hpp>

#include <source_location>
#include <string>
#include <utility>

namespace bjd::qapi {

/// QEMU's QapiErrorClass.
enum class error_class { generic_error, command_not_found, device_not_active, device_not_found };

/// The wire name: "GenericError", "CommandNotFound", "DeviceNotActive", "DeviceNotFound".
const char* to_string(error_class c) noexcept;

struct error {
    error_class cls = error_class::generic_error;
    std::string desc;
    std::string hint;   ///< optional; logged, not sent (QEMU prints hints only on the HMP)
};

/// GenericError with `desc`.
inline error generic(std::string desc) { return {error_class::generic_error, std::move(desc), {}}; }

/// Boost.System's result calls this when value() is taken from an error.
[[noreturn]] void throw_exception_from_error(const error& e, const boost::source_location& loc);

/// Control-path result. `result<void>` for commands without a return value.
template <class T>
using result = boost::system::result<T, error>;

} // namespace bjd::qapi
