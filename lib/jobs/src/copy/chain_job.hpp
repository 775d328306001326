// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// What block-stream and an intermediate block-commit share (QEMU's block/stream.c and
/// block/commit.c have the same shape): a filter above a node of the chain while the job
/// runs, the nodes the job holds, a chunked copy paced by `speed` and ruled by `on-error`, and
/// the chain written into an image header at the end.
#include "bjd/block/graph.hpp"
#include "bjd/jobs/job_driver.hpp"
#include "copy/job_nodes.hpp"
#include "copy/pacing.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace bjd::jobs::detail {

class chain_job : public job_driver {
public:
    chain_job(block::graph& g, asio::any_io_executor ex, std::string_view type);
    ~chain_job() override { leave_graph(); }

    void abort(job&) override { leave_graph(); }
    /// Leaves the graph, and reopens read-only a node the job made read-write.
    void clean(job& j) override;
    void set_speed(job& j, std::int64_t speed) override;

protected:
    /// Puts `filter` above `below` (every parent of `below` now goes through it) and returns
    /// the references to take the job's nodes with; on failure the graph is as it was.
    qapi::result<job_nodes*> enter_graph(job& j, std::shared_ptr<block::node> filter, block::node& below);
    /// Drops the job's references and takes the filter out. Idempotent.
    void leave_graph();
    /// `n` was reopened read-write for the job: read-only again when it ends.
    void reopened(std::shared_ptr<block::node> n) { reopened_ = std::move(n); }

    /// What one step of the copy did: how far it got from `offset`, whether it copied (paced),
    /// and on failure whether reading the source failed (else writing the target).
    struct step {
        result<void> r;
        std::uint64_t length = 0;
        bool copied = false;
        bool in_source = true;
    };
    /// Copies [offset, offset+n) as `piece(slot, off, len)` calls over pieces of at most
    /// `piece_size`, `depth` of them at once (`slot` < depth tells the running ones apart,
    /// for their buffers), and waits for all. The first failure is the step's.
    static constexpr std::uint64_t piece_size = 1 << 20;
    static constexpr unsigned depth = 8;
    asio::awaitable<step> in_pieces(std::uint64_t offset, std::uint64_t n,
                                    std::function<asio::awaitable<step>(unsigned, std::uint64_t, std::uint64_t)> piece);

    /// Walks [0, len) in steps of at most `chunk` (`depth` pieces when no speed is set, so
    /// in_pieces can keep that many requests in flight): sleeps as `speed` asks, stops when
    /// cancelled, and on a failed step does what `on_error` says (stop: the same step again
    /// once resumed; ignore: on to the next, the job still failing at the end). The error is
    /// the first failure's (with its errno on the job).
    asio::awaitable<qapi::result<void>> copy_loop(job& j, std::uint64_t len, std::uint64_t chunk,
                                                  qapi::blockdev_on_error on_error,
                                                  std::function<asio::awaitable<step>(std::uint64_t, std::uint64_t)> do_step);
    /// Makes `data` durable, then lets `image`'s qcow2 header name `backing` (null: none), as
    /// `backing_file` if given (a crash in between leaves a header naming the old chain, which
    /// reads the same). `image` null, or not qcow2: the flush only.
    asio::awaitable<qapi::result<void>> write_chain(job& j, block::node& data, block::node* image,
                                                    const block::node* backing,
                                                    const std::optional<std::string>& backing_file);

    block::graph& graph_;
    asio::any_io_executor ex_;
    rate_limiter limiter_;

private:
    std::string type_;
    std::shared_ptr<block::node> filter_;
    std::optional<job_nodes> nodes_;
    std::shared_ptr<block::node> reopened_;
};

} // namespace bjd::jobs::detail
