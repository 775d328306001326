// SPDX-License-Identifier: MIT
#include "bjd/qapi/keyval.hpp"

#include <boost/json.hpp>

#include <charconv>
#include <string>
#include <vector>

namespace bjd::qapi {
namespace json = boost::json;

namespace {

/// Turns objects whose keys are exactly "0".."n-1" into arrays, recursively.
void listify(json::value& v)
{
    if (!v.is_object())
        return;
    auto& o = v.as_object();
    for (auto& kv : o)
        listify(kv.value());
    if (o.empty())
        return;
    for (std::size_t i = 0; i < o.size(); ++i)
        if (!o.contains(std::to_string(i)))
            return;
    json::array a;
    for (std::size_t i = 0; i < o.size(); ++i)
        a.push_back(std::move(o[std::to_string(i)]));
    v = std::move(a);
}

std::optional<std::int64_t> parse_int(std::string_view s)
{
    if (s.empty())
        return std::nullopt;
    bool neg = s[0] == '-';
    if (neg)
        s.remove_prefix(1);
    int base = 10;
    if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s.remove_prefix(2);
    }
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n, base);
    if (ec != std::errc() || p == s.data())
        return std::nullopt;
    std::string_view suffix(p, s.data() + s.size() - p);
    std::uint64_t mult = 1;
    if (suffix.size() == 1 && base == 10) {
        switch (suffix[0]) {
        case 'k': case 'K': mult = 1ull << 10; break;
        case 'M': mult = 1ull << 20; break;
        case 'G': mult = 1ull << 30; break;
        case 'T': mult = 1ull << 40; break;
        default: return std::nullopt;
        }
    } else if (!suffix.empty()) {
        return std::nullopt;
    }
    if (n > (std::uint64_t(INT64_MAX) / mult))
        return std::nullopt;
    auto v = static_cast<std::int64_t>(n * mult);
    return neg ? -v : v;
}

} // namespace

result<json::object> parse_keyval(std::string_view text, std::string_view implied_key)
{
    json::value root = json::object();
    bool first = true;
    std::size_t i = 0;
    while (i <= text.size()) {
        // One element: key=value up to an unescaped ','.
        std::string elem;
        while (i < text.size()) {
            if (text[i] == ',') {
                if (i + 1 < text.size() && text[i + 1] == ',') {
                    elem += ',';
                    i += 2;
                    continue;
                }
                break;
            }
            elem += text[i++];
        }
        ++i;   // skip the separator
        if (elem.empty() && i > text.size() && !first)
            break;
        std::string key, value;
        auto eq = elem.find('=');
        if (eq == std::string::npos) {
            if (!first || implied_key.empty())
                return generic("Expected '=' after parameter '" + elem + "'");
            key = implied_key;
            value = elem;
        } else {
            key = elem.substr(0, eq);
            value = elem.substr(eq + 1);
        }
        first = false;
        if (key.empty())
            return generic("Invalid parameter ''");
        // Walk the dotted key, creating objects.
        json::value* cur = &root;
        std::size_t pos = 0;
        for (;;) {
            auto dot = key.find('.', pos);
            std::string part = key.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
            if (part.empty())
                return generic("Invalid parameter '" + key + "'");
            auto& obj = cur->as_object();
            if (dot == std::string::npos) {
                if (obj.contains(part))
                    return generic("Parameter '" + key + "' is set twice");
                obj[part] = value;
                break;
            }
            auto& next = obj[part];
            if (next.is_null())
                next = json::object();
            else if (!next.is_object())
                return generic("Parameter '" + key.substr(0, dot) + "' used inconsistently");
            cur = &next;
            pos = dot + 1;
        }
        if (i > text.size())
            break;
    }
    listify(root);
    if (!root.is_object())
        return generic("Parameters must be key=value pairs");
    return std::move(root.as_object());
}

bool coerce_keyval(json::value& v, std::string_view path, std::string_view expected)
{
    // Walk "a.b[2].c".
    json::value* cur = &v;
    std::size_t pos = 0;
    while (pos < path.size()) {
        if (path[pos] == '[') {
            auto close = path.find(']', pos);
            if (close == std::string_view::npos || !cur->is_array())
                return false;
            std::size_t idx = 0;
            std::from_chars(path.data() + pos + 1, path.data() + close, idx);
            auto& a = cur->as_array();
            if (idx >= a.size())
                return false;
            cur = &a[idx];
            pos = close + 1;
            if (pos < path.size() && path[pos] == '.')
                ++pos;
            continue;
        }
        auto end = path.find_first_of(".[", pos);
        std::string key(path.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos));
        if (!cur->is_object() || !cur->as_object().contains(key))
            return false;
        cur = &cur->as_object()[key];
        pos = end == std::string_view::npos ? path.size() : (path[end] == '.' ? end + 1 : end);
    }
    if (!cur->is_string())
        return false;
    std::string s(cur->as_string());
    if (expected == "boolean") {
        if (s == "on" || s == "yes" || s == "true" || s == "y")
            *cur = true;
        else if (s == "off" || s == "no" || s == "false" || s == "n")
            *cur = false;
        else
            return false;
        return true;
    }
    if (expected == "integer") {
        auto n = parse_int(s);
        if (!n)
            return false;
        *cur = *n;
        return true;
    }
    if (expected == "number") {
        try {
            std::size_t used = 0;
            double d = std::stod(s, &used);
            if (used != s.size())
                return false;
            *cur = d;
        } catch (...) {
            return false;
        }
        return true;
    }
    return false;
}

} // namespace bjd::qapi
