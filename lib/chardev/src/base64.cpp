// SPDX-License-Identifier: MIT
// Strict base64 (RFC 4648 §4): see base64.hpp for what is rejected and why.
#include "bjd/chardev/base64.hpp"

#include <array>

namespace bjd::chardev {

namespace {

constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Value of each alphabet character, -1 for others.
constexpr std::array<int, 256> make_table()
{
    std::array<int, 256> t{};
    for (int& v : t)
        v = -1;
    for (int i = 0; i < 64; ++i)
        t[static_cast<unsigned char>(alphabet[i])] = i;
    return t;
}
constexpr std::array<int, 256> table = make_table();

} // namespace

qapi::result<std::string> base64_decode(std::string_view in)
{
    std::size_t pad = 0;
    for (char c : in) {
        if (c == '=')
            ++pad;
        else if (table[static_cast<unsigned char>(c)] < 0)
            return qapi::generic("Base64 data contains invalid characters");
        else if (pad)
            return qapi::generic("Base64 data has invalid padding");   // data after '='
    }
    if (in.size() % 4 != 0)
        return qapi::generic("Base64 data is truncated");
    if (pad > 2)
        return qapi::generic("Base64 data has invalid padding");
    std::string out;
    out.reserve(in.size() / 4 * 3);
    for (std::size_t i = 0; i < in.size(); i += 4) {
        std::uint32_t v = 0;
        unsigned chars = 0;
        for (std::size_t j = 0; j < 4; ++j) {
            char c = in[i + j];
            v <<= 6;
            if (c != '=') {
                v |= static_cast<std::uint32_t>(table[static_cast<unsigned char>(c)]);
                ++chars;
            }
        }
        // 4 characters carry 3 bytes, 3 carry 2, 2 carry 1 (pad ≤ 2, so chars ≥ 2).
        out.push_back(static_cast<char>(v >> 16));
        if (chars >= 3)
            out.push_back(static_cast<char>(v >> 8));
        if (chars == 4)
            out.push_back(static_cast<char>(v));
    }
    return out;
}

std::string base64_encode(std::string_view in)
{
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= in.size(); i += 3) {
        std::uint32_t v = (std::uint32_t(static_cast<unsigned char>(in[i])) << 16) |
                          (std::uint32_t(static_cast<unsigned char>(in[i + 1])) << 8) |
                          std::uint32_t(static_cast<unsigned char>(in[i + 2]));
        out.push_back(alphabet[(v >> 18) & 63]);
        out.push_back(alphabet[(v >> 12) & 63]);
        out.push_back(alphabet[(v >> 6) & 63]);
        out.push_back(alphabet[v & 63]);
    }
    if (std::size_t rest = in.size() - i; rest > 0) {
        std::uint32_t v = std::uint32_t(static_cast<unsigned char>(in[i])) << 16;
        if (rest == 2)
            v |= std::uint32_t(static_cast<unsigned char>(in[i + 1])) << 8;
        out.push_back(alphabet[(v >> 18) & 63]);
        out.push_back(alphabet[(v >> 12) & 63]);
        out.push_back(rest == 2 ? alphabet[(v >> 6) & 63] : '=');
        out.push_back('=');
    }
    return out;
}

} // namespace bjd::chardev
