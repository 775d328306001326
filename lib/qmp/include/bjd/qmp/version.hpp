// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The version blockjobd reports: in the QMP greeting and in query-version. The "qemu" triple
/// is the QEMU release whose QMP behaviour we implement, so clients that gate features on it
/// treat us like qemu-storage-daemon 7.2; "package" names us.
#include <boost/json/object.hpp>

#include <string>

namespace bjd::qmp {

inline constexpr int qemu_version_major = 7;
inline constexpr int qemu_version_minor = 2;
inline constexpr int qemu_version_micro = 0;

/// "blockjobd <BJD_VERSION>".
std::string package_string();

/// `{"qemu": {"major", "minor", "micro"}, "package"}`: query-version's return value.
boost::json::object version_object();

} // namespace bjd::qmp
