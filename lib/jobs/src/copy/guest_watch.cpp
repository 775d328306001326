// SPDX-License-Identifier: MIT
#include "copy/guest_watch.hpp"

#include "bjd/log.hpp"

#include <algorithm>
#include <tuple>
#include <utility>

namespace bjd::jobs::detail {

namespace {

/// Reading the statistics aggregates their shards: often enough to see every window of the
/// rule, seldom enough to cost nothing next to the copy.
constexpr auto sample_every = std::chrono::milliseconds(5);

/// The read and write requests the filter completed so far, and their latencies' sum.
std::pair<std::uint64_t, std::uint64_t> guest_totals(const block::node& filter)
{
    auto s = filter.acct().read();
    std::uint64_t ops = 0, ns = 0;
    for (auto o : {stats::op::read, stats::op::write}) {
        ops += s[o].operations + s[o].failed;
        ns += s[o].total_time_ns;
    }
    return {ops, ns};
}

} // namespace

void guest_watch::watch(const std::shared_ptr<block::node>& filter, std::string who)
{
    filter_ = filter;
    who_ = std::move(who);
    ops_ = ns_ = 0;
    if (filter)
        std::tie(ops_, ns_) = guest_totals(*filter);
    sampled_ = logged_ = guest_yield::clock::now();   // the first log line once the rule settled
}

void guest_watch::sample(guest_yield::clock::time_point now)
{
    auto f = filter_.lock();
    if (!f)
        return;
    auto [ops, ns] = guest_totals(*f);
    if (ops > ops_ && ns >= ns_)
        yield_->guest_ios(now, ops - ops_, std::chrono::nanoseconds(ns - ns_));
    ops_ = ops;
    ns_ = ns;
}

unsigned guest_watch::pieces(std::uint64_t piece, unsigned depth)
{
    if (filter_.expired())
        return depth;
    if (!yield_)
        yield_.emplace(piece, piece * depth);
    const auto now = guest_yield::clock::now();
    if (now - sampled_ >= sample_every) {
        sample(now);
        sampled_ = now;
    }
    const std::uint64_t budget = yield_->budget(now);
    const auto n = static_cast<unsigned>(std::clamp<std::uint64_t>(budget / std::max<std::uint64_t>(piece, 1), 1, depth));
    if (n < depth && now - logged_ >= std::chrono::seconds(10)) {
        logged_ = now;
        log::get("jobs")->info("{}: yielding to the node's guests: {} of {} pieces in flight (guest latency {} us, "
                               "{} us at best)",
                               who_, n, depth,
                               std::chrono::duration_cast<std::chrono::microseconds>(yield_->last()).count(),
                               std::chrono::duration_cast<std::chrono::microseconds>(yield_->base()).count());
    }
    return n;
}

} // namespace bjd::jobs::detail
