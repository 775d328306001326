// SPDX-License-Identifier: MIT
// Time sources and the per-thread shard numbering.
#include "bjd/stats/clock.hpp"

#include "detail.hpp"

#include <chrono>
#include <cstdlib>
#include <string_view>

namespace bjd::stats {

namespace {

class steady final : public clock {
public:
    std::int64_t now_ns() const noexcept override
    {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(
                   std::chrono::steady_clock::now().time_since_epoch())
            .count();
    }
};

bool enabled_from_env() noexcept
{
    const char* v = std::getenv("BJD_STATS_DISABLE");
    return v == nullptr || *v == '\0' || std::string_view(v) == "0";
}

std::atomic<bool>& enabled_flag() noexcept
{
    static std::atomic<bool> flag{enabled_from_env()};
    return flag;
}

} // namespace

const clock& monotonic_clock() noexcept
{
    // Never destroyed: the statistics thread (a service that lives to the end) may still
    // read it while static objects are torn down at exit.
    static const steady* c = new steady;
    return *c;
}

std::int64_t realtime_ns() noexcept
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

bool accounting_enabled() noexcept { return enabled_flag().load(std::memory_order_relaxed); }

void set_accounting_enabled(bool on) noexcept { enabled_flag().store(on, std::memory_order_relaxed); }

namespace detail {

std::size_t this_shard_index() noexcept
{
    static std::atomic<std::size_t> next{0};
    thread_local const std::size_t idx = next.fetch_add(1, std::memory_order_relaxed) % max_shards;
    return idx;
}

} // namespace detail

} // namespace bjd::stats
