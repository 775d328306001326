// SPDX-License-Identifier: MIT
// Latency histograms (QEMU's qapi/block-core.json, block-latency-histogram-set): bin i counts latencies in [b(i-1), b(i)), the first bin
// [0, b0) and the last [b_last, ∞). Bins live per thread and are summed on demand.
#include "detail.hpp"

#include <algorithm>

namespace bjd::stats::detail {

histogram_set::~histogram_set()
{
    for (auto& b : bins)
        delete[] b.load(std::memory_order_acquire);
}

void histogram_set::add(std::size_t idx, std::uint64_t lat) noexcept
{
    auto& slot = bins[idx];
    counter* b = slot.load(std::memory_order_acquire);
    if (!b) {
        auto* fresh = new counter[bounds.size() + 2]();
        if (slot.compare_exchange_strong(b, fresh, std::memory_order_acq_rel)) {
            b = fresh;
        } else {
            delete[] fresh;
        }
    }
    // upper_bound: a latency equal to a boundary belongs to the bin that boundary opens.
    std::size_t i = std::upper_bound(bounds.begin(), bounds.end(), lat) - bounds.begin();
    b[i].fetch_add(1, std::memory_order_relaxed);
    b[bounds.size() + 1].fetch_add(lat, std::memory_order_relaxed);
}

std::vector<std::uint64_t> histogram_set::sum(std::uint64_t& sum_ns) const
{
    std::vector<std::uint64_t> out(bounds.size() + 1, 0);
    sum_ns = 0;
    for (const auto& slot : bins)
        if (const counter* b = slot.load(std::memory_order_acquire)) {
            for (std::size_t i = 0; i < out.size(); ++i)
                out[i] += b[i].load(std::memory_order_relaxed);
            sum_ns += b[out.size()].load(std::memory_order_relaxed);
        }
    return out;
}

} // namespace bjd::stats::detail
