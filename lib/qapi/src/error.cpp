// SPDX-License-Identifier: MIT
#include "bjd/qapi/error.hpp"

#include <stdexcept>

namespace bjd::qapi {

const char* to_string(error_class c) noexcept
{
    switch (c) {
    case error_class::generic_error: return "GenericError";
    case error_class::command_not_found: return "CommandNotFound";
    case error_class::device_not_active: return "DeviceNotActive";
    case error_class::device_not_found: return "DeviceNotFound";
    }
    return "GenericError";
}

void throw_exception_from_error(const error& e, const boost::source_location&)
{
    throw std::runtime_error(e.desc);
}

} // namespace bjd::qapi
