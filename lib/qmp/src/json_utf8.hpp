// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Modified UTF-8 helpers shared by the JSON parser and writer (QEMU's util/unicode.c rules:
/// C0 80 is the only accepted overlong form; surrogates, noncharacters and code points beyond
/// U+10FFFF are invalid).
#include <cstddef>
#include <string>
#include <string_view>

namespace bjd::qmp::detail {

/// Whether `cp` may be encoded: in range, not a surrogate, not a noncharacter.
inline bool is_valid_codepoint(long cp) noexcept
{
    if (cp < 0 || cp > 0x10FFFF) {
        return false;
    }
    if ((cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE) {
        return false;
    }
    return !(cp >= 0xD800 && cp <= 0xDFFF);
}

/// Decodes one code point of `s` starting at `pos`; `pos` is advanced past the bytes that were
/// part of the (possibly broken) sequence. Returns -1 for an invalid sequence. Bytes past the end
/// of `s` read as NUL, like the C string QEMU looks at.
long mod_utf8_decode(std::string_view s, std::size_t& pos) noexcept;

/// Appends the modified UTF-8 encoding of `cp` (0 → C0 80). False if `cp` is not valid.
bool mod_utf8_encode(std::string& out, long cp);

} // namespace bjd::qmp::detail
