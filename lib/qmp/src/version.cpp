// SPDX-License-Identifier: MIT
/// \file
/// The reported version (greeting and query-version).
#include "bjd/qmp/version.hpp"

namespace bjd::qmp {

std::string package_string()
{
    return std::string("blockjobd ") + BJD_VERSION;
}

boost::json::object version_object()
{
    return {{"qemu", {{"major", qemu_version_major}, {"minor", qemu_version_minor}, {"micro", qemu_version_micro}}},
            {"package", package_string()}};
}

} // namespace bjd::qmp
