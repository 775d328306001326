// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// What block-stream and an intermediate block-commit share (QEMU's block/stream.c and
/// block/commit.c have the same shape): a filter above a node of the chain while the job
/// runs, the nodes the job holds, a chunked copy (copy_driver's loop, ruled by `on-error`),
/// and the chain written into an image header at the end.
#include "bjd/block/graph.hpp"
#include "bjd/io/buffer.hpp"
#include "copy/copy_driver.hpp"
#include "copy/job_nodes.hpp"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace bjd::jobs::detail {

class chain_job : public copy_driver {
public:
    chain_job(block::graph& g, asio::any_io_executor ex, std::string_view type);
    ~chain_job() override { leave_graph(); }

    void abort(job&) override { leave_graph(); }
    /// Leaves the graph, and reopens read-only a node the job made read-write.
    void clean(job& j) override;

protected:
    /// Puts `filter` above `below` (every parent of `below` now goes through it) and returns
    /// the references to take the job's nodes with; on failure the graph is as it was.
    qapi::result<job_nodes*> enter_graph(job& j, std::shared_ptr<block::node> filter, block::node& below);
    /// Drops the job's references and takes the filter out. Idempotent.
    void leave_graph();
    /// `n` was reopened read-write for the job: read-only again when it ends.
    void reopened(std::shared_ptr<block::node> n) { reopened_ = std::move(n); }

    /// Pieces of at most `piece_size`, `depth` of them in flight (copy_driver::in_pieces).
    static constexpr std::uint64_t piece_size = 1 << 20;
    static constexpr unsigned depth = 8;
    asio::awaitable<step> in_pieces(std::uint64_t offset, std::uint64_t n, piece_pool::piece_fn piece)
    {
        return copy_driver::in_pieces(offset, n, piece_size, depth, std::move(piece));
    }
    /// One buffer per piece in flight (index them by in_pieces' slot), kept for the whole
    /// job: a buffer per piece would fault in fresh memory for every page copied. Registered
    /// with the I/O engine, so that requests into them skip pinning their pages.
    std::vector<io::aligned_buffer> piece_buffers()
    {
        std::vector<io::aligned_buffer> bufs;
        for (unsigned i = 0; i < depth; ++i)
            bufs.push_back(io::make_registered_buffer(graph_.engine(), piece_size));
        return bufs;
    }
    /// The walk of copy_loop for a job with one `on_error` policy and QEMU's `chunk`: steps of
    /// `chunk` under a speed limit, else `depth` pieces (so that in_pieces can keep that many
    /// requests in flight); an ignored failure still fails the job at the end.
    static step_policy chain_policy(std::uint64_t chunk, qapi::blockdev_on_error on_error)
    {
        return {.on_source_error = on_error,
                .on_target_error = on_error,
                .step = std::max(chunk, piece_size * depth),
                .throttled_step = chunk};
    }
    /// Makes `data` durable, then lets `image`'s qcow2 header name `backing` (null: none), as
    /// `backing_file` if given (a crash in between leaves a header naming the old chain, which
    /// reads the same). `image` null, or not qcow2: the flush only.
    asio::awaitable<qapi::result<void>> write_chain(job& j, block::node& data, block::node* image,
                                                    const block::node* backing,
                                                    const std::optional<std::string>& backing_file);

    block::graph& graph_;

private:
    std::string type_;
    std::shared_ptr<block::node> filter_;
    std::optional<job_nodes> nodes_;
    std::shared_ptr<block::node> reopened_;
};

} // namespace bjd::jobs::detail
