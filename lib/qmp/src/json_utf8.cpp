// SPDX-License-Identifier: MIT
/// \file
/// Modified UTF-8 decoding and encoding for the QMP JSON dialect.
#include "json_utf8.hpp"

namespace bjd::qmp::detail {

long mod_utf8_decode(std::string_view s, std::size_t& pos) noexcept
{
    static constexpr long min_cp[5] = {0x80, 0x800, 0x10000, 0x200000, 0x4000000};
    auto at = [&](std::size_t i) -> unsigned { return i < s.size() ? static_cast<unsigned char>(s[i]) : 0u; };

    unsigned byte = at(pos);
    if (byte == 0 && pos >= s.size()) {
        return -1;
    }
    ++pos;
    if (byte < 0x80) {
        return static_cast<long>(byte);
    }
    if (byte >= 0xFE || (byte & 0x40) == 0) {
        return -1;   // impossible byte, or a continuation byte without a lead
    }
    unsigned len = 0;
    unsigned mask = 0x80;
    for (; byte & mask; mask >>= 1) {
        ++len;
    }
    long cp = static_cast<long>(byte & (mask - 1));
    for (unsigned i = 1; i < len; ++i) {
        unsigned cont = at(pos);
        if ((cont & 0xC0) != 0x80) {
            return -1;   // continuation byte missing; `pos` stays on the offender
        }
        ++pos;
        cp = (cp << 6) | static_cast<long>(cont & 0x3F);
    }
    if (cp > 0x10FFFF) {
        return -1;
    }
    if ((cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE) {
        return -1;
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) {
        return -1;
    }
    if (cp < min_cp[len - 2] && !(cp == 0 && len == 2)) {
        return -1;   // overlong, other than C0 80
    }
    return cp;
}

bool mod_utf8_encode(std::string& out, long cp)
{
    if (!is_valid_codepoint(cp)) {
        return false;
    }
    if (cp > 0 && cp <= 0x7F) {
        out.push_back(static_cast<char>(cp));
    } else if (cp <= 0x7FF) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp <= 0xFFFF) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    return true;
}

} // namespace bjd::qmp::detail
