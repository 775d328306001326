// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// What every copying job (mirror, stream, …) paces itself with on the main loop: the
/// `speed` limit, and the broadcast wake-up its requests signal.
#include "bjd/event_flag.hpp"

#include <chrono>
#include <cstdint>

namespace bjd::jobs::detail {

namespace asio = boost::asio;

using bjd::event_flag;

/// Byte-accurate token bucket: tokens accrue at `speed` B/s up to one 100 ms slice; a caller
/// may dispatch while the balance is not negative, so the overshoot is at most one request.
class rate_limiter {
public:
    void set_speed(std::int64_t speed);
    std::int64_t speed() const noexcept { return speed_; }
    void charge(std::uint64_t bytes);
    /// How long to wait before the next request; zero when it may go now.
    std::chrono::nanoseconds delay();

private:
    void refill(std::chrono::steady_clock::time_point now);
    std::int64_t speed_ = 0;
    double tokens_ = 0;
    std::chrono::steady_clock::time_point last_{};
};

} // namespace bjd::jobs::detail
