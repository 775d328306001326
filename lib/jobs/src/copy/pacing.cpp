// SPDX-License-Identifier: MIT
#include "copy/pacing.hpp"

#include <algorithm>

namespace bjd::jobs::detail {

void rate_limiter::refill(std::chrono::steady_clock::time_point now)
{
    if (last_ == std::chrono::steady_clock::time_point{})
        last_ = now;
    double dt = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    double cap = std::max(1.0, static_cast<double>(speed_) * 0.1);   // one 100 ms slice
    tokens_ = std::min(cap, tokens_ + dt * static_cast<double>(speed_));
}

void rate_limiter::set_speed(std::int64_t speed)
{
    refill(std::chrono::steady_clock::now());
    speed_ = speed;
    double cap = std::max(1.0, static_cast<double>(speed_) * 0.1);
    tokens_ = std::min(tokens_, cap);
}

void rate_limiter::charge(std::uint64_t bytes)
{
    if (speed_ <= 0)
        return;
    refill(std::chrono::steady_clock::now());
    tokens_ -= static_cast<double>(bytes);
}

std::chrono::nanoseconds rate_limiter::delay()
{
    if (speed_ <= 0)
        return std::chrono::nanoseconds(0);
    refill(std::chrono::steady_clock::now());
    if (tokens_ >= 0)
        return std::chrono::nanoseconds(0);
    double secs = -tokens_ / static_cast<double>(speed_);
    return std::chrono::nanoseconds(static_cast<std::int64_t>(secs * 1e9) + 1);
}

} // namespace bjd::jobs::detail
