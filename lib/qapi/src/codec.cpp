// SPDX-License-Identifier: MIT
// Decoding rules and error texts of QEMU 7.2's QObject input visitor (QEMU's qapi/qobject-input-visitor.c).
#include "bjd/qapi/codec.hpp"

#include <limits>

namespace bjd::qapi {

namespace json = boost::json;

namespace detail {

std::string input::full_name() const
{
    std::string out;
    for (const segment& s : path_) {
        if (s.is_index) {
            out += '[';
            out += std::to_string(s.index);
            out += ']';
        } else {
            if (!out.empty())
                out += '.';
            out += s.name;
        }
    }
    return out.empty() ? std::string("<anonymous>") : out;
}

std::string input::bare_name() const
{
    if (path_.empty() || path_.back().is_index)
        return "null";
    return std::string(path_.back().name);
}

bool input::fail(std::string desc)
{
    err_ = generic(std::move(desc));
    return false;
}

bool input::fail_type(std::string_view json_type)
{
    return fail("Invalid parameter type for '" + full_name() + "', expected: " + std::string(json_type));
}

bool input::fail_range(std::string_view what)
{
    return fail("Parameter '" + bare_name() + "' expects " + std::string(what));
}

bool input::fail_enum(std::string_view value)
{
    return fail("Parameter '" + bare_name() + "' does not accept value '" + std::string(value) + "'");
}

bool input::check_unexpected(const json::object& o, std::span<const std::string_view> a,
                             std::span<const std::string_view> b)
{
    for (const auto& kv : o) {
        std::string_view key = kv.key();
        bool known = false;
        for (std::string_view n : a)
            known = known || n == key;
        for (std::string_view n : b)
            known = known || n == key;
        if (!known) {
            push(key);
            fail("Parameter '" + full_name() + "' is unexpected");
            pop();
            return false;
        }
    }
    return true;
}

bool decode_int(input& in, const json::value& v, std::int64_t min, std::int64_t max,
                const char* type, std::int64_t& out)
{
    if (!codec<std::int64_t>::decode(in, v, out))
        return false;
    if (out < min || out > max)
        return in.fail_range(type);
    return true;
}

bool decode_uint(input& in, const json::value& v, std::uint64_t max, const char* type,
                 std::uint64_t& out)
{
    if (!codec<std::uint64_t>::decode(in, v, out))
        return false;
    if (out > max)
        return in.fail_range(type);
    return true;
}

} // namespace detail

bool codec<std::string>::decode(detail::input& in, const json::value& v, std::string& out)
{
    const json::string* s = v.if_string();
    if (!s)
        return in.fail_type("string");
    out.assign(s->data(), s->size());
    return true;
}

bool codec<bool>::decode(detail::input& in, const json::value& v, bool& out)
{
    const bool* b = v.if_bool();
    if (!b)
        return in.fail_type("boolean");
    out = *b;
    return true;
}

bool codec<double>::decode(detail::input& in, const json::value& v, double& out)
{
    switch (v.kind()) {
    case json::kind::int64: out = static_cast<double>(v.get_int64()); return true;
    case json::kind::uint64: out = static_cast<double>(v.get_uint64()); return true;
    case json::kind::double_: out = v.get_double(); return true;
    default: return in.fail_type("number");
    }
}

bool codec<std::int64_t>::decode(detail::input& in, const json::value& v, std::int64_t& out)
{
    // QEMU keeps integers above INT64_MAX as uint64 and never converts doubles: both are
    // type errors for an int member.
    if (!v.is_int64())
        return in.fail_type("integer");
    out = v.get_int64();
    return true;
}

bool codec<std::uint64_t>::decode(detail::input& in, const json::value& v, std::uint64_t& out)
{
    if (v.is_uint64()) {
        out = v.get_uint64();
        return true;
    }
    if (v.is_int64()) {
        out = static_cast<std::uint64_t>(v.get_int64());   // negative wraps, as in QEMU
        return true;
    }
    // QEMU reports any other value as a bad value rather than a bad type, with the full path.
    return in.fail("Parameter '" + in.full_name() + "' expects uint64");
}

bool codec<std::nullptr_t>::decode(detail::input& in, const json::value& v, std::nullptr_t& out)
{
    if (!v.is_null())
        return in.fail_type("null");
    out = nullptr;
    return true;
}

} // namespace bjd::qapi
