// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Catch2 helpers shared by the unit tests of every module.
#include "bjd/qapi/error.hpp"

#include <catch2/catch.hpp>

namespace bjd::test {

/// Whether a control-path result succeeded; its error text is shown when it did not.
///
///     REQUIRE(ok(graph.add(opts)));
template <class T>
bool ok(const qapi::result<T>& r)
{
    if (!r.has_value())
        UNSCOPED_INFO("error: " << r.error().desc);
    return r.has_value();
}

} // namespace bjd::test
