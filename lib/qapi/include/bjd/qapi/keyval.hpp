// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// QEMU's key=value command-line syntax (`--blockdev driver=file,node-name=n,cache.direct=on`),
/// turned into the JSON the generated decoders take.
#include "bjd/qapi/error.hpp"

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <string_view>

namespace bjd::qapi {

/// Parses `text` into an object of strings: dotted keys nest, all-numeric keys 0..n-1 make a
/// list, ",," is a literal comma. A first element without '=' is the value of `implied_key`
/// (an error when `implied_key` is empty). Errors use QEMU's wording where it has one.
result<boost::json::object> parse_keyval(std::string_view text, std::string_view implied_key = {});

/// Decodes keyval strings into `T` the way QEMU's keyval input visitor does: a member whose
/// schema type is a number or boolean accepts its string form ("on"/"off", "yes"/"no",
/// "true"/"false"; decimal or 0x integers, with k/M/G/T suffixes for sizes). `decode` is the
/// generated decoder; conversion is driven by its own type errors, so the schema stays the one
/// source of truth.
template <class T, class Decode>
result<T> decode_keyval(boost::json::value v, Decode&& decode);

/// Converts the string at `path` (dotted, with [i] list indices, as decoder errors name it)
/// inside `v` to `expected` ("integer", "number", "boolean"). False when it cannot.
bool coerce_keyval(boost::json::value& v, std::string_view path, std::string_view expected);

template <class T, class Decode>
result<T> decode_keyval(boost::json::value v, Decode&& decode)
{
    // Each round fixes one member named by the decoder's type error; bounded by the members.
    for (int round = 0; round < 256; ++round) {
        result<T> r = decode(v);
        if (r)
            return r;
        const std::string& d = r.error().desc;
        std::string_view path, expected;
        // "Invalid parameter type for 'PATH', expected: TYPE", or, for uint64 members (QEMU
        // words those as a bad value), "Parameter 'PATH' expects uint64".
        constexpr std::string_view type_prefix = "Invalid parameter type for '";
        constexpr std::string_view value_prefix = "Parameter '";
        constexpr std::string_view uint_suffix = "' expects uint64";
        if (d.rfind(type_prefix, 0) == 0) {
            auto end = d.find("', expected: ", type_prefix.size());
            if (end == std::string::npos)
                return r;
            path = std::string_view(d.data() + type_prefix.size(), end - type_prefix.size());
            expected = std::string_view(d.data() + end + 13, d.size() - end - 13);
        } else if (d.rfind(value_prefix, 0) == 0 && d.size() > value_prefix.size() + uint_suffix.size() &&
                   d.compare(d.size() - uint_suffix.size(), uint_suffix.size(), uint_suffix) == 0) {
            path = std::string_view(d.data() + value_prefix.size(), d.size() - value_prefix.size() - uint_suffix.size());
            expected = "integer";
        } else {
            return r;
        }
        if (!coerce_keyval(v, path, expected))
            return r;
    }
    return generic("Too many parameters");
}

} // namespace bjd::qapi
