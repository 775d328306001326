// SPDX-License-Identifier: MIT
#include "bjd/qapi/keyval.hpp"

#include <boost/json.hpp>

#include <charconv>
#include <optional>
#include <string>
#include <vector>

namespace bjd::qapi {
namespace json = boost::json;

namespace {

bool is_index(std::string_view key)
{
    return !key.empty() && key.size() <= 9 && key.find_first_not_of("0123456789") == std::string_view::npos;
}

/// Turns objects whose keys are all list indices into arrays, recursively (QEMU's
/// keyval_listify): the indices must be exactly 0..n-1, and an object's keys either all
/// indices or none. `prefix` is the dotted key of `v` with its trailing '.', for errors.
std::optional<std::string> listify(json::value& v, const std::string& prefix)
{
    if (!v.is_object())
        return std::nullopt;
    auto& o = v.as_object();
    std::size_t indices = 0;
    for (auto& kv : o) {
        if (auto e = listify(kv.value(), prefix + std::string(kv.key()) + "."))
            return e;
        indices += is_index(kv.key());
    }
    if (indices == 0)
        return std::nullopt;
    if (indices != o.size())
        return "Parameters '" + prefix + "*' used inconsistently";
    json::array a;
    for (std::size_t i = 0; i < o.size(); ++i) {
        auto it = o.find(std::to_string(i));
        if (it == o.end())
            return "Parameter '" + prefix + std::to_string(i) + "' missing";
        a.push_back(std::move(it->value()));
    }
    v = std::move(a);
    return std::nullopt;
}

/// A decoder path ("bitmaps[0].name") as the command line spells it ("bitmaps.0.name").
std::string dotted(std::string_view path)
{
    std::string out;
    for (char c : path) {
        if (c == '[')
            out += '.';
        else if (c != ']')
            out += c;
    }
    return out;
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
    if (auto e = listify(root, ""))
        return generic(*e);
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

namespace {

/// The decoder's error with the member it names ("Parameter 'bitmaps[0].name' is missing")
/// spelled as on the command line ("bitmaps.0.name").
error keyval_words(const error& e)
{
    constexpr std::string_view prefix = "Parameter '";
    if (e.desc.rfind(prefix, 0) != 0)
        return e;
    auto end = e.desc.find('\'', prefix.size());
    if (end == std::string::npos)
        return e;
    error out = e;
    out.desc = std::string(prefix) + dotted(std::string_view(e.desc).substr(prefix.size(), end - prefix.size())) +
               e.desc.substr(end);
    return out;
}

} // namespace

std::optional<error> keyval_retry(json::value& v, const error& e)
{
    const std::string& d = e.desc;
    std::string_view path, expected;
    // "Invalid parameter type for 'PATH', expected: TYPE", or, for uint64 members (QEMU
    // words those as a bad value), "Parameter 'PATH' expects uint64".
    constexpr std::string_view type_prefix = "Invalid parameter type for '";
    constexpr std::string_view value_prefix = "Parameter '";
    constexpr std::string_view uint_suffix = "' expects uint64";
    if (d.rfind(type_prefix, 0) == 0) {
        auto end = d.find("', expected: ", type_prefix.size());
        if (end == std::string::npos)
            return keyval_words(e);
        path = std::string_view(d.data() + type_prefix.size(), end - type_prefix.size());
        expected = std::string_view(d.data() + end + 13, d.size() - end - 13);
    } else if (d.rfind(value_prefix, 0) == 0 && d.size() > value_prefix.size() + uint_suffix.size() &&
               d.compare(d.size() - uint_suffix.size(), uint_suffix.size(), uint_suffix) == 0) {
        path = std::string_view(d.data() + value_prefix.size(), d.size() - value_prefix.size() - uint_suffix.size());
        expected = "integer";
    } else {
        return keyval_words(e);
    }
    if (coerce_keyval(v, path, expected))
        return std::nullopt;
    // A string that does not convert: QEMU's keyval visitor names the value it wanted. Any
    // other misfit (an object where a list belongs) keeps the decoder's words.
    const bool scalar = expected == "boolean" || expected == "integer" || expected == "number";
    if (scalar && d.rfind(value_prefix, 0) == 0)
        return generic("Parameter '" + dotted(path) + "' expects integer");
    if (scalar) {
        // Only strings reach a coercion; anything else is a genuine type error.
        json::value* cur = &v;
        std::string p = dotted(path);
        for (std::size_t pos = 0; cur && pos <= p.size();) {
            auto dot = p.find('.', pos);
            std::string key = p.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
            if (cur->is_object()) {
                auto* next = cur->as_object().if_contains(key);
                cur = next;
            } else if (cur->is_array() && is_index(key)) {
                auto& a = cur->as_array();
                std::size_t i = std::stoul(key);
                cur = i < a.size() ? &a[i] : nullptr;
            } else {
                cur = nullptr;
            }
            if (dot == std::string::npos)
                break;
            pos = dot + 1;
        }
        if (cur && cur->is_string())
            return generic("Parameter '" + p + "' expects " +
                           (expected == "boolean" ? std::string("'on' or 'off'") : std::string(expected)));
    }
    return generic("Invalid parameter type for '" + dotted(path) + "', expected: " + std::string(expected));
}

} // namespace bjd::qapi
