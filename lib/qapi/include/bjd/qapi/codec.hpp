// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// JSON encoding and decoding of schema types (runtime support for generated code).
///
/// `decode<T>(v)` accepts exactly what QEMU 7.2's QObject input visitor accepts and fails
/// with its texts (QEMU's qapi/qobject-input-visitor.c); `to_json(x)` produces what QEMU's output visitor produces
/// (absent optionals are omitted). `codec<T>` is specialised here for builtins, lists and
/// enums, and by the generated types.hpp / commands.hpp / events.hpp for schema types.
/// Pure functions: callable from any thread.
#include "bjd/qapi/box.hpp"
#include "bjd/qapi/error.hpp"

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/string.hpp>
#include <boost/json/value.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace bjd::qapi {

/// `static bool decode(detail::input&, const boost::json::value&, T&)` and
/// `static boost::json::value encode(const T&)`; object types add `decode_object`,
/// `decode_members`, `encode_members` and `names()`.
template <class T>
struct codec;

namespace detail {

/// Decoding state: the path to the value being decoded (for error texts) and the first error.
class input {
public:
    void push(std::string_view member) { path_.push_back({member, 0, false}); }
    void push(std::size_t index) { path_.push_back({{}, index, true}); }
    void pop() { path_.pop_back(); }

    /// "a.b[1].c": QEMU's full_name(), used for type, missing and unexpected errors.
    std::string full_name() const;
    /// The innermost member name, or "null" for a list element (enum and range errors).
    std::string bare_name() const;

    /// Records `desc` as the error; returns false so decoders can `return in.fail(...)`.
    bool fail(std::string desc);
    /// "Invalid parameter type for '<full name>', expected: <json_type>".
    bool fail_type(std::string_view json_type);
    /// "Parameter '<bare name>' expects <what>" (sized integer out of range).
    bool fail_range(std::string_view what);
    /// "Parameter '<bare name>' does not accept value '<value>'".
    bool fail_enum(std::string_view value);

    /// Decodes required member `key` of `o` into `out`; "Parameter 'x' is missing" if absent.
    template <class F>
    bool required(const boost::json::object& o, std::string_view key, F& out)
    {
        const boost::json::value* v = o.if_contains(key);
        if (!v) {
            push(key);
            fail("Parameter '" + full_name() + "' is missing");
            pop();
            return false;
        }
        push(key);
        bool ok = codec<F>::decode(*this, *v, out);
        pop();
        return ok;
    }

    /// Decodes optional member `key` into `out` when present (`null` is a value, not absence).
    template <class F>
    bool optional(const boost::json::object& o, std::string_view key, std::optional<F>& out)
    {
        const boost::json::value* v = o.if_contains(key);
        if (!v)
            return true;
        push(key);
        bool ok = codec<F>::decode(*this, *v, out.emplace());
        pop();
        return ok;
    }

    /// "Parameter 'path.key' is unexpected" for the first key of `o` in neither list.
    bool check_unexpected(const boost::json::object& o, std::span<const std::string_view> a,
                          std::span<const std::string_view> b = {});

    /// The recorded error (GenericError).
    error take_error() { return std::move(err_); }

private:
    struct segment {
        std::string_view name;
        std::size_t index;
        bool is_index;
    };
    std::vector<segment> path_;
    error err_;
};

/// Shared by the signed sized integers: int64 first, then the range.
bool decode_int(input& in, const boost::json::value& v, std::int64_t min, std::int64_t max,
                const char* type, std::int64_t& out);
/// Shared by the unsigned types: uint64 (negative accepted as two's complement), then the range.
bool decode_uint(input& in, const boost::json::value& v, std::uint64_t max, const char* type,
                 std::uint64_t& out);

template <class I>
struct int_codec {
    static bool decode(input& in, const boost::json::value& v, I& out)
    {
        if constexpr (std::is_signed_v<I>) {
            std::int64_t x = 0;
            if (!decode_int(in, v, INT64_C(-1) << (8 * sizeof(I) - 1),
                            static_cast<std::int64_t>((~std::uint64_t{0}) >> (65 - 8 * sizeof(I))),
                            name(), x))
                return false;
            out = static_cast<I>(x);
        } else {
            std::uint64_t x = 0;
            if (!decode_uint(in, v, (~std::uint64_t{0}) >> (64 - 8 * sizeof(I)), name(), x))
                return false;
            out = static_cast<I>(x);
        }
        return true;
    }
    static boost::json::value encode(I x)
    {
        if constexpr (std::is_signed_v<I>)
            return static_cast<std::int64_t>(x);
        else
            return static_cast<std::uint64_t>(x);
    }
    static const char* name()
    {
        if constexpr (std::is_signed_v<I>)
            return sizeof(I) == 1 ? "int8_t" : sizeof(I) == 2 ? "int16_t" : sizeof(I) == 4 ? "int32_t" : "int64_t";
        else
            return sizeof(I) == 1 ? "uint8_t" : sizeof(I) == 2 ? "uint16_t" : sizeof(I) == 4 ? "uint32_t" : "uint64";
    }
};

/// Decode/encode of object types, in terms of the generated `decode_object` / `encode_members`.
template <class T>
struct object_codec {
    static bool decode(input& in, const boost::json::value& v, T& out)
    {
        const boost::json::object* o = v.if_object();
        if (!o)
            return in.fail_type("object");
        return codec<T>::decode_object(in, *o, out);
    }
    static boost::json::value encode(const T& x)
    {
        boost::json::object o;
        codec<T>::encode_members(x, o);
        return o;
    }
};

} // namespace detail

// -- builtins --------------------------------------------------------------------------------

template <>
struct codec<std::string> {
    static bool decode(detail::input& in, const boost::json::value& v, std::string& out);
    static boost::json::value encode(const std::string& s) { return boost::json::string(s); }
};

template <>
struct codec<bool> {
    static bool decode(detail::input& in, const boost::json::value& v, bool& out);
    static boost::json::value encode(bool b) { return b; }
};

/// `number`: any JSON number.
template <>
struct codec<double> {
    static bool decode(detail::input& in, const boost::json::value& v, double& out);
    static boost::json::value encode(double d) { return d; }
};

template <> struct codec<std::int8_t> : detail::int_codec<std::int8_t> {};
template <> struct codec<std::int16_t> : detail::int_codec<std::int16_t> {};
template <> struct codec<std::int32_t> : detail::int_codec<std::int32_t> {};
template <> struct codec<std::uint8_t> : detail::int_codec<std::uint8_t> {};
template <> struct codec<std::uint16_t> : detail::int_codec<std::uint16_t> {};
template <> struct codec<std::uint32_t> : detail::int_codec<std::uint32_t> {};

/// `int` / `int64`: a JSON integer that fits int64 (never a double, never > INT64_MAX).
template <>
struct codec<std::int64_t> {
    static bool decode(detail::input& in, const boost::json::value& v, std::int64_t& out);
    static boost::json::value encode(std::int64_t x) { return x; }
};

/// `uint64` / `size`: a JSON integer; negative int64 values wrap (QEMU compatibility).
template <>
struct codec<std::uint64_t> {
    static bool decode(detail::input& in, const boost::json::value& v, std::uint64_t& out);
    static boost::json::value encode(std::uint64_t x) { return x; }
};

/// `null`.
template <>
struct codec<std::nullptr_t> {
    static bool decode(detail::input& in, const boost::json::value& v, std::nullptr_t& out);
    static boost::json::value encode(std::nullptr_t) { return nullptr; }
};

/// `any`: every JSON value, copied.
template <>
struct codec<boost::json::value> {
    static bool decode(detail::input&, const boost::json::value& v, boost::json::value& out)
    {
        out = v;
        return true;
    }
    static boost::json::value encode(const boost::json::value& v) { return v; }
};

template <class T>
struct codec<std::vector<T>> {
    static bool decode(detail::input& in, const boost::json::value& v, std::vector<T>& out)
    {
        const boost::json::array* a = v.if_array();
        if (!a)
            return in.fail_type("array");
        out.clear();
        out.reserve(a->size());
        for (std::size_t i = 0; i < a->size(); ++i) {
            in.push(i);
            bool ok = codec<T>::decode(in, (*a)[i], out.emplace_back());
            in.pop();
            if (!ok)
                return false;
        }
        return true;
    }
    static boost::json::value encode(const std::vector<T>& xs)
    {
        boost::json::array a;
        a.reserve(xs.size());
        for (const T& x : xs)
            a.push_back(codec<T>::encode(x));
        return a;
    }
};

template <class T>
struct codec<box<T>> {
    static bool decode(detail::input& in, const boost::json::value& v, box<T>& out)
    {
        return codec<T>::decode(in, v, *out);
    }
    static boost::json::value encode(const box<T>& b) { return codec<T>::encode(*b); }
};

/// Generated enums: a JSON string naming a value (`to_string` / `parse_enum` found by ADL).
template <class E>
    requires std::is_enum_v<E>
struct codec<E> {
    static bool decode(detail::input& in, const boost::json::value& v, E& out)
    {
        const boost::json::string* s = v.if_string();
        if (!s)
            return in.fail_type("string");
        if (!parse_enum(std::string_view(*s), out))
            return in.fail_enum(std::string_view(*s));
        return true;
    }
    static boost::json::value encode(E e) { return boost::json::string(to_string(e)); }
};

// -- entry points ----------------------------------------------------------------------------

/// Decodes `v` as a T; on failure the error is GenericError with QEMU's text.
template <class T>
result<T> decode(const boost::json::value& v)
{
    detail::input in;
    T out{};
    if (!codec<T>::decode(in, v, out))
        return result<T>(boost::system::in_place_error, in.take_error());
    return result<T>(boost::system::in_place_value, std::move(out));
}

/// Encodes `x` the way QEMU's output visitor does.
template <class T>
boost::json::value to_json(const T& x)
{
    return codec<T>::encode(x);
}

} // namespace bjd::qapi
