// SPDX-License-Identifier: MIT
/// \file
/// qmp-shell's shorthand: shell-like word splitting, value typing and dotted keys.
#include "bjd/client/shorthand.hpp"

#include <boost/json/parse.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>

namespace bjd::client {

namespace json = boost::json;

std::vector<std::string> split_words(std::string_view line)
{
    std::vector<std::string> words;
    std::string cur;
    bool in_word = false;
    for (std::size_t i = 0; i < line.size(); ++i) {
        char c = line[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            if (in_word) {
                words.push_back(std::move(cur));
                cur.clear();
                in_word = false;
            }
            continue;
        }
        in_word = true;
        if (c == '\\') {
            if (i + 1 >= line.size()) {
                throw shorthand_error("No escaped character");
            }
            cur += line[++i];
        } else if (c == '\'') {
            auto end = line.find('\'', i + 1);
            if (end == std::string_view::npos) {
                throw shorthand_error("No closing quotation");
            }
            cur.append(line.substr(i + 1, end - i - 1));
            i = end;
        } else if (c == '"') {
            std::size_t j = i + 1;
            for (; j < line.size() && line[j] != '"'; ++j) {
                // Inside double quotes a backslash escapes only \ and ".
                if (line[j] == '\\' && j + 1 < line.size() && (line[j + 1] == '"' || line[j + 1] == '\\')) {
                    ++j;
                }
                cur += line[j];
            }
            if (j >= line.size()) {
                throw shorthand_error("No closing quotation");
            }
            i = j;
        } else {
            cur += c;
        }
    }
    if (in_word) {
        words.push_back(std::move(cur));
    }
    return words;
}

namespace {

std::string lower(std::string_view s)
{
    std::string r(s);
    std::transform(r.begin(), r.end(), r.begin(), [](unsigned char c) { return std::tolower(c); });
    return r;
}

bool is_json_number(std::string_view s)
{
    // JSON's grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    std::size_t i = 0;
    auto digits = [&] {
        std::size_t start = i;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
            ++i;
        }
        return i > start;
    };
    if (i < s.size() && s[i] == '-') {
        ++i;
    }
    if (i < s.size() && s[i] == '0') {
        ++i;
    } else if (!digits()) {
        return false;
    }
    if (i < s.size() && s[i] == '.') {
        ++i;
        if (!digits()) {
            return false;
        }
    }
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        ++i;
        if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
            ++i;
        }
        if (!digits()) {
            return false;
        }
    }
    return i == s.size();
}

} // namespace

json::value parse_value(std::string_view text)
{
    if (is_json_number(text)) {
        boost::system::error_code ec;
        json::value v = json::parse(text, ec);
        if (!ec) {
            return v;
        }
    }
    std::string l = lower(text);
    if (l == "true") {
        return true;
    }
    if (l == "false") {
        return false;
    }
    if (text.starts_with('{') || text.starts_with('[')) {
        boost::system::error_code ec;
        json::value v = json::parse(text, ec);
        if (!ec) {
            return v;
        }
    }
    return json::string(text);
}

void add_argument(json::object& args, std::string_view word)
{
    auto eq = word.find('=');
    if (eq == std::string_view::npos) {
        throw shorthand_error("Expected a key=value pair, got '" + std::string(word) + "'");
    }
    std::string_view key = word.substr(0, eq);
    json::value value = parse_value(word.substr(eq + 1));

    std::vector<std::string_view> parts;
    for (std::size_t start = 0;;) {
        auto dot = key.find('.', start);
        parts.push_back(key.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
        if (dot == std::string_view::npos) {
            break;
        }
        start = dot + 1;
    }
    json::object* parent = &args;
    std::string path;
    for (std::size_t i = 0; i < parts.size(); ++i) {
        if (parts[i].empty()) {
            throw shorthand_error("Invalid key '" + std::string(key) + "'");
        }
        path += (i ? "." : "") + std::string(parts[i]);
        bool last = i + 1 == parts.size();
        json::value* slot = parent->if_contains(parts[i]);
        if (last) {
            if (slot) {
                throw shorthand_error(slot->is_object() ? "Cannot use '" + path + "' as both leaf and non-leaf key"
                                                        : "Cannot set '" + path + "' multiple times");
            }
            parent->emplace(parts[i], std::move(value));
            return;
        }
        if (!slot) {
            slot = &parent->emplace(parts[i], json::object()).first->value();
        } else if (!slot->is_object()) {
            throw shorthand_error("Cannot use '" + path + "' as both leaf and non-leaf key");
        }
        parent = &slot->get_object();
    }
}

parsed_line parse_words(const std::vector<std::string>& words)
{
    parsed_line p;
    if (words.empty()) {
        return p;
    }
    p.empty = false;
    p.command = words[0];
    for (std::size_t i = 1; i < words.size(); ++i) {
        add_argument(p.arguments, words[i]);
    }
    return p;
}

parsed_line parse_line(std::string_view line)
{
    auto first = line.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos || line[first] == '#') {
        return {};
    }
    if (line[first] == '{') {
        boost::system::error_code ec;
        json::value v = json::parse(line, ec);
        if (ec) {
            throw shorthand_error("Invalid JSON: " + ec.message());
        }
        parsed_line p;
        p.empty = false;
        p.raw = true;
        p.request = std::move(v.get_object());
        return p;
    }
    return parse_words(split_words(line));
}

} // namespace bjd::client
