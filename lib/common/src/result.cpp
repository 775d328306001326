// SPDX-License-Identifier: MIT
#include "bjd/result.hpp"

#include <cstring>

namespace bjd {

std::string strerror_text(const std::error_code& ec)
{
    if (ec.category() == std::generic_category() || ec.category() == std::system_category())
        return ::strerror(ec.value());
    return ec.message();
}

std::string errno_name(const std::error_code& ec)
{
    if (ec.category() == std::generic_category() || ec.category() == std::system_category()) {
        if (const char* n = ::strerrorname_np(ec.value()))
            return n;
    }
    return "E" + std::to_string(ec.value());
}

} // namespace bjd
