// SPDX-License-Identifier: MIT
#pragma once
// Helpers for the stats tests: issue one request of a given latency on a manual clock.
#include "bjd/stats/block_acct.hpp"

namespace bjd::stats::test {

inline constexpr std::int64_t ms = 1'000'000;
inline constexpr std::int64_t sec = 1'000'000'000;

/// Starts a request at the clock's current time, advances the clock by `lat`, completes it.
inline void issue(block_acct& a, manual_clock& clk, op type, std::uint64_t bytes, std::int64_t lat,
                  bool ok = true)
{
    auto c = a.start(type, bytes);
    clk.advance(lat);
    a.finish(c, ok);
}

} // namespace bjd::stats::test
