// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Text for people: indented JSON, byte counts and durations.
#include <boost/json/value.hpp>

#include <cstdint>
#include <string>

namespace bjd::client {

/// JSON indented by `indent` spaces per level, keys in the server's order; empty objects
/// and arrays as {} and []. No trailing newline.
std::string pretty_json(const boost::json::value& v, int indent = 2);

/// "0 B", "512 B", "1.5 KiB", "64.0 MiB", "1.00 GiB" (binary units, three significant digits).
std::string format_bytes(std::int64_t bytes);

/// "7s", "1m05s", "2h03m", "3d04h"; "--" for a negative value (unknown).
std::string format_duration(std::int64_t seconds);

} // namespace bjd::client
