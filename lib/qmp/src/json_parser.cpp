// SPDX-License-Identifier: MIT
/// \file
/// Recursive-descent parser from framed tokens to boost::json values, with QEMU 7.2's error
/// texts and precedence (the first error found wins).
#include "json_token.hpp"
#include "json_utf8.hpp"

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/string.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <string_view>

namespace bjd::qmp::detail {
namespace {

namespace json = boost::json;

/// QEMU formats parse errors into a 1024-byte buffer: the message is cut at 1023 bytes.
constexpr std::size_t max_message = 1023;

class parser {
public:
    explicit parser(const std::vector<json_token>& tokens) : tokens_(tokens) {}

    bool parse(json::value& out)
    {
        return parse_value(out);
    }

    const std::string& error() const { return error_; }

private:
    const json_token* peek() const { return pos_ < tokens_.size() ? &tokens_[pos_] : nullptr; }
    const json_token* pop() { return pos_ < tokens_.size() ? &tokens_[pos_++] : nullptr; }

    bool fail(std::string message)
    {
        if (message.size() > max_message) {
            message.resize(max_message);
        }
        error_ = "JSON parse error, " + message;
        return false;
    }

    bool parse_value(json::value& out)
    {
        const json_token* t = peek();
        if (!t) {
            return fail("premature EOI");
        }
        switch (t->type) {
        case token_type::lcurly:
            return parse_object(out);
        case token_type::lsquare:
            return parse_array(out);
        case token_type::integer:
        case token_type::float_:
            return parse_number(out);
        case token_type::string: {
            json::string s;
            if (!parse_string(*pop(), s)) {
                return false;
            }
            out = std::move(s);
            return true;
        }
        case token_type::keyword:
            return parse_keyword(out);
        default:
            return fail("expecting value");
        }
    }

    bool parse_pair(json::object& obj)
    {
        if (!peek()) {
            return fail("premature EOI");
        }
        json::value key;
        if (!parse_value(key)) {
            return false;
        }
        if (!key.is_string()) {
            return fail("key is not a string in object");
        }
        const json_token* t = pop();
        if (!t) {
            return fail("premature EOI");
        }
        if (t->type != token_type::colon) {
            return fail("missing : in object pair");
        }
        json::value v;
        if (!parse_value(v)) {
            return false;
        }
        const json::string& k = key.get_string();
        if (obj.contains(k)) {
            return fail("duplicate key");
        }
        obj.emplace(k, std::move(v));
        return true;
    }

    bool parse_object(json::value& out)
    {
        pop();   // '{'
        json::object obj;
        const json_token* t = peek();
        if (!t) {
            return fail("premature EOI");
        }
        if (t->type == token_type::rcurly) {
            pop();
            out = std::move(obj);
            return true;
        }
        if (!parse_pair(obj)) {
            return false;
        }
        for (;;) {
            t = pop();
            if (!t) {
                return fail("premature EOI");
            }
            if (t->type == token_type::rcurly) {
                break;
            }
            if (t->type != token_type::comma) {
                return fail("expected separator in dict");
            }
            if (!parse_pair(obj)) {
                return false;
            }
        }
        out = std::move(obj);
        return true;
    }

    bool parse_array(json::value& out)
    {
        pop();   // '['
        json::array arr;
        const json_token* t = peek();
        if (!t) {
            return fail("premature EOI");
        }
        if (t->type == token_type::rsquare) {
            pop();
            out = std::move(arr);
            return true;
        }
        for (;;) {
            json::value v;
            if (!parse_value(v)) {
                return false;
            }
            arr.push_back(std::move(v));
            t = pop();
            if (!t) {
                return fail("premature EOI");
            }
            if (t->type == token_type::rsquare) {
                break;
            }
            if (t->type != token_type::comma) {
                return fail("expected separator in list");
            }
        }
        out = std::move(arr);
        return true;
    }

    bool parse_keyword(json::value& out)
    {
        const json_token& t = *pop();
        if (t.text == "true") {
            out = true;
        } else if (t.text == "false") {
            out = false;
        } else if (t.text == "null") {
            out = nullptr;
        } else {
            return fail("invalid keyword '" + t.text + "'");
        }
        return true;
    }

    bool parse_number(json::value& out)
    {
        const json_token& t = *pop();
        const char* b = t.text.data();
        const char* e = b + t.text.size();
        if (t.type == token_type::integer) {
            std::int64_t i = 0;
            auto r = std::from_chars(b, e, i);
            if (r.ec == std::errc{} && r.ptr == e) {
                out = i;
                return true;
            }
            if (t.text[0] != '-') {
                std::uint64_t u = 0;
                r = std::from_chars(b, e, u);
                if (r.ec == std::errc{} && r.ptr == e) {
                    out = u;
                    return true;
                }
            }
        }
        out = std::strtod(t.text.c_str(), nullptr);
        return true;
    }

    static int hex4(std::string_view s, std::size_t at)
    {
        int cp = 0;
        for (std::size_t i = 0; i < 4; ++i) {
            char c = at + i < s.size() ? s[at + i] : '\0';
            cp <<= 4;
            if (c >= '0' && c <= '9') {
                cp |= c - '0';
            } else if (c >= 'a' && c <= 'f') {
                cp |= 10 + c - 'a';
            } else if (c >= 'A' && c <= 'F') {
                cp |= 10 + c - 'A';
            } else {
                return -1;
            }
        }
        return cp;
    }

    bool parse_string(const json_token& t, json::string& out)
    {
        std::string_view s = t.text;
        const char quote = s[0];
        std::size_t p = 1;
        std::string buf;
        buf.reserve(s.size());
        while (p < s.size() && s[p] != quote) {
            if (s[p] != '\\') {
                std::size_t next = p;
                long cp = mod_utf8_decode(s, next);
                if (cp < 0) {
                    return fail("invalid UTF-8 sequence in string");
                }
                buf.append(s.substr(p, next - p));
                p = next;
                continue;
            }
            const std::size_t beg = p++;
            const char c = p < s.size() ? s[p] : '\0';
            ++p;
            switch (c) {
            case '"': buf.push_back('"'); break;
            case '\'': buf.push_back('\''); break;
            case '\\': buf.push_back('\\'); break;
            case '/': buf.push_back('/'); break;
            case 'b': buf.push_back('\b'); break;
            case 'f': buf.push_back('\f'); break;
            case 'n': buf.push_back('\n'); break;
            case 'r': buf.push_back('\r'); break;
            case 't': buf.push_back('\t'); break;
            case 'u': {
                long cp = hex4(s, p);
                p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF && p + 1 < s.size() && s[p] == '\\' && s[p + 1] == 'u') {
                    cp = 0x10000 + ((cp & 0x3FF) << 10);
                    int trailing = hex4(s, p + 2);
                    if (trailing >= 0xDC00 && trailing <= 0xDFFF) {
                        cp |= trailing & 0x3FF;
                        p += 6;
                    } else {
                        cp = -1;
                    }
                }
                if (!mod_utf8_encode(buf, cp)) {
                    std::size_t n = std::min(p - beg, s.size() - beg);
                    return fail(std::string(s.substr(beg, n)) + " is not a valid Unicode character");
                }
                break;
            }
            default:
                return fail("invalid escape sequence in string");
            }
        }
        out.assign(buf.data(), buf.size());
        return true;
    }

    const std::vector<json_token>& tokens_;
    std::size_t pos_ = 0;
    std::string error_;
};

} // namespace

bool parse_tokens(const std::vector<json_token>& tokens, boost::json::value& out, std::string& error)
{
    parser p(tokens);
    if (!p.parse(out)) {
        error = p.error();
        return false;
    }
    return true;
}

} // namespace bjd::qmp::detail
