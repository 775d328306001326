// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The copy of block-stream, block-commit and blockdev-backup yields to the guests of the node
/// it copies (docs/copy-yield.md), as the mirror's does. Each of these jobs puts a filter above
/// that node: guests' requests go through it, the job's own requests go around it. So the
/// filter's statistics (block::node::acct) time exactly the guests' requests; guest_watch
/// reads them, feeds guest_yield, and says how many pieces the copy may have in flight.
#include "bjd/block/node.hpp"
#include "bjd/jobs/guest_yield.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace bjd::jobs::detail {

class guest_watch {
public:
    /// Watches the guests of `filter` from now on (null: none; the copy then runs at full
    /// depth). `who` names the job in the log ("stream 'job0'").
    void watch(const std::shared_ptr<block::node>& filter, std::string who);

    /// How many pieces of `piece` bytes the copy may have in flight now, from 1 to `depth`.
    unsigned pieces(std::uint64_t piece, unsigned depth);

private:
    void sample(guest_yield::clock::time_point now);

    std::weak_ptr<block::node> filter_;
    std::string who_;
    std::optional<guest_yield> yield_;   ///< made on the first pieces(): its step is a piece
    std::uint64_t ops_ = 0;              ///< the filter's read and write requests, last seen
    std::uint64_t ns_ = 0;               ///< and their latencies' sum
    guest_yield::clock::time_point sampled_{};
    guest_yield::clock::time_point logged_{};
};

} // namespace bjd::jobs::detail
