// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Tokens passed from the QMP JSON lexer/streamer to the parser.
#include <boost/json/value.hpp>

#include <string>
#include <vector>

namespace bjd::qmp::detail {

enum class token_type { lcurly, rcurly, lsquare, rsquare, colon, comma, integer, float_, keyword, string };

struct json_token {
    token_type type;
    std::string text;   ///< the token's raw bytes, e.g. `"a\n"` with quotes and escapes
};

/// Parses one value from `tokens` (a complete message as framed by the streamer). On failure
/// returns false and sets `error` to the full desc ("JSON parse error, ...").
bool parse_tokens(const std::vector<json_token>& tokens, boost::json::value& out, std::string& error);

} // namespace bjd::qmp::detail
