// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// QEMU's key=value command-line syntax (`--blockdev driver=file,node-name=n,cache.direct=on`),
/// turned into the JSON the generated decoders take.
#include "bjd/qapi/error.hpp"

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <optional>
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

/// One round of decode_keyval: given the decoder's error `e` for `v`, converts the member it
/// names and returns nothing (decode again), or returns the error to report, worded as QEMU's
/// keyval visitor words it ("Parameter 'a.0.b' expects 'on' or 'off'", "... expects
/// integer"; list indices dotted as on the command line).
std::optional<error> keyval_retry(boost::json::value& v, const error& e);

template <class T, class Decode>
result<T> decode_keyval(boost::json::value v, Decode&& decode)
{
    // Each round fixes one member named by the decoder's type error; bounded by the members.
    for (int round = 0; round < 256; ++round) {
        result<T> r = decode(v);
        if (r)
            return r;
        if (auto e = keyval_retry(v, r.error()))
            return *e;
    }
    return generic("Too many parameters");
}

} // namespace bjd::qapi
