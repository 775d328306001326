// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Strict RFC 4648 base64 (standard alphabet, padded), for ringbuf-write/ringbuf-read.
///
/// Unlike QEMU (GLib's lenient decoder behind a character check in chardev/char-ringbuf.c), decoding rejects
/// everything that is not canonical-length base64, and nothing is decoded on error:
/// * a character outside A–Z a–z 0–9 + / = (whitespace and newlines included):
///   "Base64 data contains invalid characters";
/// * '=' anywhere but the last one or two characters, or more than two of them:
///   "Base64 data has invalid padding";
/// * a length that is not a multiple of four: "Base64 data is truncated".
/// The empty string decodes to nothing.
#include "bjd/qapi/error.hpp"

#include <string>
#include <string_view>

namespace bjd::chardev {

/// Decodes `in` (see file comment for the errors).
qapi::result<std::string> base64_decode(std::string_view in);

/// Standard padded base64 of `in`.
std::string base64_encode(std::string_view in);

} // namespace bjd::chardev
