// SPDX-License-Identifier: MIT
/// \file
/// QEMU-format JSON output: compact ", "/": " separators or 4-space pretty printing, pure ASCII
/// strings, %.17g doubles and, by default, QDict member order so that our output is
/// byte-identical to qemu's.
#include "bjd/qmp/json.hpp"

#include "json_utf8.hpp"

#include <boost/json/array.hpp>
#include <boost/json/string.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace bjd::qmp {
namespace {

namespace json = boost::json;

/// QEMU's QDict bucket for `key`: tdb_hash(key) % QDICT_BUCKET_MAX (512).
unsigned qdict_bucket(std::string_view key)
{
    std::uint32_t value = 0x238F13AFu * static_cast<std::uint32_t>(key.size());
    for (std::size_t i = 0; i < key.size(); ++i) {
        value += static_cast<std::uint32_t>(static_cast<unsigned char>(key[i])) << (i * 5 % 24);
    }
    return (1103515243u * value + 12345u) % 512u;
}

class writer {
public:
    writer(std::string& out, const json_write_options& opts) : out_(out), opts_(opts) {}

    void value(const json::value& v)
    {
        switch (v.kind()) {
        case json::kind::null: out_ += "null"; break;
        case json::kind::bool_: out_ += v.get_bool() ? "true" : "false"; break;
        case json::kind::int64: out_ += std::to_string(v.get_int64()); break;
        case json::kind::uint64: out_ += std::to_string(v.get_uint64()); break;
        case json::kind::double_: number(v.get_double()); break;
        case json::kind::string: json_quote(out_, v.get_string()); break;
        case json::kind::array: array(v.get_array()); break;
        case json::kind::object: object(v.get_object()); break;
        }
    }

private:
    void number(double d)
    {
        if (std::isnan(d)) {
            out_ += "null";
        } else if (std::isinf(d)) {
            out_ += d > 0 ? "1e999" : "-1e999";
        } else {
            char buf[40];
            std::snprintf(buf, sizeof buf, "%.17g", d);
            out_ += buf;
        }
    }

    void newline()
    {
        if (opts_.pretty) {
            out_.push_back('\n');
            out_.append(4 * depth_, ' ');
        }
    }

    /// Separator before a member or element (QEMU's maybe_comma).
    void separator(bool first)
    {
        if (!first) {
            out_.push_back(',');
            if (opts_.pretty) {
                newline();
            } else {
                out_.push_back(' ');
            }
        } else {
            newline();
        }
    }

    void array(const json::array& a)
    {
        out_.push_back('[');
        ++depth_;
        bool first = true;
        for (const json::value& e : a) {
            separator(first);
            first = false;
            value(e);
        }
        --depth_;
        newline();
        out_.push_back(']');
    }

    void object(const json::object& o)
    {
        out_.push_back('{');
        ++depth_;
        bool first = true;
        auto member = [&](const json::key_value_pair& kv) {
            separator(first);
            first = false;
            json_quote(out_, kv.key());
            out_ += ": ";
            value(kv.value());
        };
        if (opts_.order == json_order::qdict && o.size() > 1) {
            std::vector<std::string_view> keys;
            keys.reserve(o.size());
            for (const auto& kv : o) {
                keys.push_back(kv.key());
            }
            for (std::size_t i : qdict_order(keys)) {
                member(*(o.begin() + static_cast<std::ptrdiff_t>(i)));
            }
        } else {
            for (const auto& kv : o) {
                member(kv);
            }
        }
        --depth_;
        newline();
        out_.push_back('}');
    }

    std::string& out_;
    const json_write_options& opts_;
    std::size_t depth_ = 0;
};

void append_u(std::string& out, long cp)
{
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\u%04lX", cp);
    out += buf;
}

} // namespace

std::vector<std::size_t> qdict_order(const std::vector<std::string_view>& keys)
{
    std::vector<std::size_t> idx(keys.size());
    std::vector<unsigned> bucket(keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) {
        idx[i] = i;
        bucket[i] = qdict_bucket(keys[i]);
    }
    // Ascending bucket; within a bucket the newest insertion comes first.
    std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
        return bucket[a] != bucket[b] ? bucket[a] < bucket[b] : a > b;
    });
    return idx;
}

void json_quote(std::string& out, std::string_view s)
{
    out.push_back('"');
    std::size_t pos = 0;
    while (pos < s.size()) {
        long cp = detail::mod_utf8_decode(s, pos);
        switch (cp) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (cp < 0) {
                cp = 0xFFFD;
            }
            if (cp > 0xFFFF) {
                append_u(out, 0xD800 + ((cp - 0x10000) >> 10));
                append_u(out, 0xDC00 + ((cp - 0x10000) & 0x3FF));
            } else if (cp < 0x20 || cp >= 0x7F) {
                append_u(out, cp);
            } else {
                out.push_back(static_cast<char>(cp));
            }
        }
    }
    out.push_back('"');
}

void write_json(std::string& out, const boost::json::value& v, const json_write_options& opts)
{
    writer(out, opts).value(v);
}

std::string to_json_text(const boost::json::value& v, const json_write_options& opts)
{
    std::string out;
    write_json(out, v, opts);
    return out;
}

std::string to_wire_message(const boost::json::value& v, const json_write_options& opts)
{
    std::string text = to_json_text(v, opts);
    if (!opts.pretty) {
        text += "\r\n";
        return text;
    }
    std::string out;
    out.reserve(text.size() + text.size() / 16 + 2);
    for (char c : text) {
        if (c == '\n') {
            out += "\r\n";
        } else {
            out.push_back(c);
        }
    }
    out += "\r\n";
    return out;
}

} // namespace bjd::qmp
