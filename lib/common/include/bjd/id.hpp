// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The one rule for user-chosen IDs: node names, drive, export, job and object IDs.
#include <algorithm>
#include <string_view>

namespace bjd {

/// QEMU's id_wellformed: an ASCII letter, then letters, digits, '-', '.' and '_'.
constexpr bool id_wellformed(std::string_view id) noexcept
{
    constexpr auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
    return !id.empty() && letter(id[0]) && std::all_of(id.begin() + 1, id.end(), [&](char c) {
        return letter(c) || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
    });
}

} // namespace bjd
