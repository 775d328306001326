// SPDX-License-Identifier: MIT
// Per-node accounting: the data-path updates (lock-free, per-thread shards) and on-demand
// aggregation. The accounting rules are QEMU's block_account_one_io / block_acct_invalid.
#include "bjd/stats/block_acct.hpp"
#include "bjd/stats/service.hpp"

#include "detail.hpp"

#include <algorithm>
#include <cassert>

namespace bjd::stats {

using detail::field;

block_acct::block_acct(const clock& c, service* svc)
    : clock_(c), service_(svc), start_time_ns_(realtime_ns())
{
}

block_acct::~block_acct()
{
    // Unregister first: afterwards the stats thread no longer touches this object.
    if (service_ && registered_)
        service_->remove(*this);
    for (auto& s : shards_)
        delete s.load(std::memory_order_acquire);
    // timed_ and hist_ point into sets_, which frees them.
}

service* block_acct::default_service()
{
    // Never destroyed: nodes may outlive static destruction order, and a running jthread at
    // exit is harmless (it only touches registered, still-living objects).
    static service* s = new service();
    return s;
}

detail::shard& block_acct::local_shard() noexcept
{
    auto& slot = shards_[detail::this_shard_index()];
    detail::shard* s = slot.load(std::memory_order_acquire);
    if (s)
        return *s;
    auto* fresh = new detail::shard();
    if (slot.compare_exchange_strong(s, fresh, std::memory_order_acq_rel))
        return *fresh;
    delete fresh;   // another thread sharing this shard index won the race
    return *s;
}

// ---- data path --------------------------------------------------------------------------------

block_acct::cookie block_acct::start(op type, std::uint64_t bytes) const noexcept
{
    if (!accounting_enabled())
        return cookie{-1, bytes, type};
    return cookie{clock_.now_ns(), bytes, type};
}

void block_acct::finish(const cookie& c, bool ok) noexcept
{
    if (c.start_ns < 0)
        return;
    const std::int64_t now = clock_.now_ns();
    const std::uint64_t lat = now > c.start_ns ? std::uint64_t(now - c.start_ns) : 0;
    const unsigned t = static_cast<unsigned>(c.type);
    const std::size_t idx = detail::this_shard_index();
    detail::shard& s = local_shard();
    constexpr auto rlx = std::memory_order_relaxed;

    if (ok) {
        s.v[t][detail::f_bytes].fetch_add(c.bytes, rlx);
        s.v[t][detail::f_ops].fetch_add(1, rlx);
    } else {
        s.v[t][detail::f_failed].fetch_add(1, rlx);
    }
    // Histograms see every completion, failed or not (QEMU does not consult account_failed).
    if (t < latency_op_count)
        if (detail::histogram_set* h = hist_[t].load(std::memory_order_acquire))
            h->add(idx, lat);
    if (ok || account_failed_.load(rlx)) {
        s.v[t][detail::f_time].fetch_add(lat, rlx);
        detail::atomic_max(s.last_access_ns, now);
        if (t < latency_op_count)
            if (detail::timed_set* ts = timed_.load(std::memory_order_acquire))
                ts->add(idx, t, lat);
    }
}

void block_acct::invalid(op type) noexcept
{
    if (!accounting_enabled())
        return;
    detail::shard& s = local_shard();
    s.v[static_cast<unsigned>(type)][detail::f_invalid].fetch_add(1, std::memory_order_relaxed);
    if (account_invalid_.load(std::memory_order_relaxed))
        detail::atomic_max(s.last_access_ns, clock_.now_ns());
}

void block_acct::merged(op type, std::uint64_t n) noexcept
{
    if (!accounting_enabled())
        return;
    local_shard().v[static_cast<unsigned>(type)][detail::f_merged].fetch_add(n, std::memory_order_relaxed);
}

void block_acct::note_write_end(std::uint64_t end) noexcept
{
    // Not subject to the benchmark switch: node geometry users (thin provisioning) rely on it.
    detail::atomic_max(local_shard().wr_highest, end);
}

// ---- control ----------------------------------------------------------------------------------

void block_acct::keep(std::shared_ptr<void> p)
{
    if (p)
        sets_.push_back(std::move(p));
}

void block_acct::set_intervals(std::span<const std::uint32_t> seconds)
{
    assert(std::all_of(seconds.begin(), seconds.end(), [](std::uint32_t s) { return s > 0; }));
    bool newly_registered = false;
    {
        std::lock_guard lk(ctl_mu_);
        detail::timed_set* fresh = nullptr;
        if (!seconds.empty()) {
            std::shared_ptr<detail::timed_set> owned = detail::make_timed_set(seconds, clock_.now_ns());
            fresh = owned.get();
            keep(std::move(owned));
        }
        timed_.store(fresh, std::memory_order_release);
        if (fresh && service_ && !registered_) {
            registered_ = true;
            newly_registered = true;
        }
    }
    // Outside ctl_mu_: the stats thread takes its own mutex and then ours.
    if (newly_registered)
        service_->add(*this);
    else if (service_ && registered_)
        service_->wake();
}

std::vector<std::uint32_t> block_acct::intervals() const
{
    std::lock_guard lk(ctl_mu_);
    std::vector<std::uint32_t> out;
    if (const detail::timed_set* ts = timed_.load(std::memory_order_acquire))
        for (const auto& iv : ts->intervals)
            out.push_back(iv->seconds);
    return out;
}

bool block_acct::set_histogram(op type, std::span<const std::uint64_t> boundaries)
{
    const unsigned t = static_cast<unsigned>(type);
    assert(t < latency_op_count);
    std::uint64_t prev = 0;
    for (std::uint64_t b : boundaries) {
        if (b <= prev)
            return false;
        prev = b;
    }
    auto fresh = std::make_shared<detail::histogram_set>();
    fresh->bounds.assign(boundaries.begin(), boundaries.end());
    fresh->start_time_ns = realtime_ns();
    std::lock_guard lk(ctl_mu_);
    hist_[t].store(fresh.get(), std::memory_order_release);
    keep(std::move(fresh));
    return true;
}

void block_acct::clear_histogram(op type)
{
    const unsigned t = static_cast<unsigned>(type);
    assert(t < latency_op_count);
    std::lock_guard lk(ctl_mu_);
    hist_[t].store(nullptr, std::memory_order_release);
}

void block_acct::clear_histograms()
{
    for (unsigned t = 0; t < latency_op_count; ++t)
        clear_histogram(static_cast<op>(t));
}

void block_acct::roll(std::int64_t now_ns)
{
    std::lock_guard lk(ctl_mu_);
    roll_locked(now_ns);
}

void block_acct::roll_locked(std::int64_t now_ns) const
{
    if (detail::timed_set* ts = timed_.load(std::memory_order_acquire))
        detail::roll_timed(*ts, now_ns);
}

std::optional<std::int64_t> block_acct::next_due_ns(std::int64_t now_ns) const
{
    std::lock_guard lk(ctl_mu_);
    if (const detail::timed_set* ts = timed_.load(std::memory_order_acquire))
        return detail::next_due(*ts, now_ns);
    return std::nullopt;
}

snapshot block_acct::read() const
{
    std::lock_guard lk(ctl_mu_);
    const std::int64_t now = clock_.now_ns();
    roll_locked(now);

    snapshot out;
    out.account_invalid = account_invalid();
    out.account_failed = account_failed();
    out.start_time_ns = start_time_ns_;
    std::int64_t last = std::numeric_limits<std::int64_t>::min();
    constexpr auto rlx = std::memory_order_relaxed;
    for (const auto& slot : shards_) {
        const detail::shard* s = slot.load(std::memory_order_acquire);
        if (!s)
            continue;
        for (unsigned t = 0; t < op_count; ++t) {
            op_totals& o = out.ops[t];
            o.bytes += s->v[t][detail::f_bytes].load(rlx);
            o.operations += s->v[t][detail::f_ops].load(rlx);
            o.failed += s->v[t][detail::f_failed].load(rlx);
            o.invalid += s->v[t][detail::f_invalid].load(rlx);
            o.merged += s->v[t][detail::f_merged].load(rlx);
            o.total_time_ns += s->v[t][detail::f_time].load(rlx);
        }
        last = std::max(last, s->last_access_ns.load(rlx));
        out.wr_highest_offset = std::max(out.wr_highest_offset, s->wr_highest.load(rlx));
    }
    if (last != std::numeric_limits<std::int64_t>::min())
        out.idle_time_ns = std::max<std::int64_t>(0, now - last);
    if (const detail::timed_set* ts = timed_.load(std::memory_order_acquire))
        out.timed = detail::read_timed(*ts, now);
    for (unsigned t = 0; t < latency_op_count; ++t)
        if (const detail::histogram_set* h = hist_[t].load(std::memory_order_acquire)) {
            histogram_totals& ht = out.histograms[t].emplace();
            ht.boundaries = h->bounds;
            ht.bins = h->sum(ht.sum_ns);
            ht.start_time_ns = h->start_time_ns;
        }
    return out;
}

} // namespace bjd::stats
