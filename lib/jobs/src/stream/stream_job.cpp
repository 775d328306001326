// SPDX-License-Identifier: MIT
// block-stream (QEMU 7.2's blockdev.c qmp_block_stream and block/stream.c): the checks, the
// copy loop, and the end, where the base becomes the node's backing image.
#include "bjd/jobs/stream.hpp"

#include "bjd/block/copy_on_read.hpp"
#include "bjd/block/driver.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/block/reopen.hpp"
#include "copy/chain.hpp"
#include "copy/chain_job.hpp"
#include "copy/job_nodes.hpp"
#include "jobs_log.hpp"

#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace bjd::jobs {

namespace {

/// QEMU's STREAM_CHUNK: how much one iteration looks at.
constexpr std::uint64_t chunk = 512 << 10;

using detail::chain_contains;
using detail::chain_next;
using detail::find_backing_image;

struct stream_setup {
    std::shared_ptr<block::node> top;             ///< the node filled
    std::shared_ptr<block::node> base;            ///< its backing image afterwards (null: none)
    std::shared_ptr<block::node> bottom;          ///< the lowest node copied from; null: nothing to copy
    std::optional<std::string> backing_file;
    qapi::blockdev_on_error on_error = qapi::blockdev_on_error::report;
};

class stream_job final : public detail::chain_job {
public:
    stream_job(block::graph& g, stream_setup s, asio::any_io_executor ex)
        : chain_job(g, std::move(ex), "stream"), s_(std::move(s))
    {
    }

    /// Puts `filter` above the node and takes the job's nodes: the filter (its main node),
    /// the node, and the nodes between it and the base, which go away at the end. On failure
    /// the graph is as it was. `top_reopened`: read-only again at the end.
    qapi::result<void> attach(job& j, std::shared_ptr<block::copy_on_read> filter, bool top_reopened)
    {
        auto entered = enter_graph(j, filter, *s_.top);
        if (!entered)
            return entered.error();
        filter_ = std::move(filter);
        if (top_reopened)
            reopened(s_.top);
        // References that take nothing: they cannot conflict.
        detail::job_nodes& n = **entered;
        (void)n.hold(filter_, "main node");
        (void)n.hold(s_.top, "target");
        for (block::node* i = chain_next(*s_.top); i && i != s_.base.get(); i = chain_next(*i))
            (void)n.hold(i->shared_from_this(), "intermediate node");
        return {};
    }

    asio::awaitable<qapi::result<void>> run(job& j) override
    {
        if (!s_.bottom)
            co_return qapi::result<void>{};   // the base already is the backing image
        // What the node does not hold itself, and an image between its backing image and the
        // bottom (inclusive) does, is copied up through the filter.
        auto bufs = piece_buffers();
        auto populate = [&](unsigned slot, std::uint64_t offset, std::uint64_t n) -> asio::awaitable<step> {
            step st;
            st.r = co_await filter_->populate(offset, n, bufs[slot].span());
            co_return st;
        };
        auto copy = [&](std::uint64_t offset, std::uint64_t n) -> asio::awaitable<step> {
            step st;
            auto bs = co_await s_.top->block_status(offset, n);
            if (!bs) {
                st.r = bs.error();
                co_return st;
            }
            st.length = bs->length;
            if (bs->flags & block::status_allocated)
                co_return st;
            auto above = co_await detail::allocated_between(chain_next(*s_.top), chain_next(*s_.bottom), offset,
                                                            st.length);
            if (!above) {
                st.r = above.error();
                co_return st;
            }
            st.length = above->second;
            if (!above->first)
                co_return st;
            co_return co_await in_pieces(offset, st.length, populate);
        };
        // An error that was ignored still keeps the backing chain as it is.
        if (auto r = co_await copy_loop(j, s_.top->size(), chain_policy(chunk, s_.on_error), copy); !r)
            co_return r;
        if (j.is_cancelled())
            co_return qapi::result<void>{};
        block::node* image = s_.top->cow_backing() ? s_.top.get() : nullptr;
        co_return co_await write_chain(j, *s_.top, image, s_.base.get(), s_.backing_file);
    }

    /// Graph changes of QEMU's stream_prepare: the filter goes, and the base becomes the
    /// node's backing image; intermediate nodes nobody else holds are closed.
    qapi::result<void> prepare(job& j) override
    {
        leave_graph();
        if (!s_.bottom || !s_.top->cow_backing())
            return {};
        std::shared_ptr<block::node> old = s_.top->cow_backing()->shared_from_this();
        (void)block::set_qcow2_backing(*s_.top, nullptr);
        if (s_.base)
            if (auto r = block::set_qcow2_backing(*s_.top, s_.base); !r) {
                logger()->error("stream '{}': cannot attach '{}' below '{}': {}", j.id(), s_.base->name(),
                                s_.top->name(), r.error().desc);
                (void)block::set_qcow2_backing(*s_.top, old);
                return qapi::generic(std::strerror(EPERM));
            }
        logger()->info("stream '{}': '{}' now has {} as its backing image", j.id(), s_.top->name(),
                       s_.base ? "'" + s_.base->name() + "'" : std::string("none"));
        if (!old->monitor_owned())
            graph_.close_later(ex_, old);
        return {};
    }

private:
    stream_setup s_;
    std::shared_ptr<block::copy_on_read> filter_;
};

} // namespace

asio::awaitable<qapi::result<void>> start_stream(manager& m, block::graph& g, const stream_params& p)
{
    if (p.base && p.base_node)
        co_return qapi::generic("'base' and 'base-node' cannot be specified at the same time");
    if (p.base && p.bottom)
        co_return qapi::generic("'base' and 'bottom' cannot be specified at the same time");
    if (p.bottom && p.base_node)
        co_return qapi::generic("'bottom' and 'base-node' cannot be specified at the same time");
    auto found = g.lookup(p.device);
    if (!found)
        co_return found.error();
    std::shared_ptr<block::node> top = *found;

    std::shared_ptr<block::node> base;
    if (p.base) {
        base = find_backing_image(*top, *p.base);
        if (!base)
            co_return qapi::generic("Can't find '" + *p.base + "' in the backing chain");
    }
    if (p.base_node) {
        auto b = g.lookup(std::nullopt, p.base_node);
        if (!b)
            co_return b.error();
        base = *b;
        if (base == top || !chain_contains(*top, base.get()))
            co_return qapi::generic("Node '" + *p.base_node + "' is not a backing image of '" + p.device + "'");
    }
    std::shared_ptr<block::node> bottom;
    if (p.bottom) {
        auto b = g.lookup(std::nullopt, p.bottom);
        if (!b)
            co_return b.error();
        bottom = *b;
        if (bottom->is_filter())
            co_return qapi::generic("Stream bottom node must not be a filter, '" + *p.bottom + "' is a filter");
        if (!chain_contains(*top, bottom.get()))
            co_return qapi::generic("Node '" + *p.bottom + "' is not in a chain starting from '" + p.device + "'");
        if (block::node* b2 = chain_next(*bottom))
            base = b2->shared_from_this();
    }
    // Every node from the device down to the base must allow streaming (a job uses none).
    for (block::node* i = top.get(); i && i != base.get(); i = chain_next(*i))
        if (auto r = i->check_op(block::block_op::stream); !r)
            co_return r.error();
    if (!base && p.backing_file)
        co_return qapi::generic("backing file specified, but streaming the entire chain");

    // The lowest node above the base (QEMU's base_overlay), unless there is nothing to copy.
    if (!bottom) {
        for (block::node* i = chain_next(*top); i && i != base.get(); i = chain_next(*i))
            if (!i->is_filter())
                bottom = i->shared_from_this();
    }

    // The filter is made before the job, as QEMU inserts it first.
    std::string filter_name;
    if (p.filter_node_name) {
        if (auto r = detail::check_filter_name(g, *p.filter_node_name); !r)
            co_return qapi::generic("Could not create node: " + r.error().desc);
        filter_name = *p.filter_node_name;
    }
    const std::string job_id = p.job_id ? *p.job_id : (g.drives().find(p.device) ? p.device : std::string());
    if (auto r = check_job_id(job_id); !r)
        co_return r.error();

    // The node is written: reopen it read-write for the job (QEMU's stream_start).
    const bool reopen = top->read_only();
    if (reopen)
        if (auto r = co_await block::reopen_read_only(*top, false); !r)
            co_return r.error();
    auto undo_reopen = [&]() -> asio::awaitable<void> {
        if (reopen)
            (void)co_await block::reopen_read_only(*top, true);
    };

    block::node_options fo;
    fo.name = filter_name.empty() ? g.auto_name() : filter_name;
    stream_setup s;
    s.top = top;
    s.base = base;
    s.bottom = bottom;
    s.backing_file = p.backing_file;
    s.on_error = p.on_error;
    auto filter = std::make_shared<block::copy_on_read>(fo, top, !p.filter_node_name, m.loop().get_executor());
    auto drv = std::make_unique<stream_job>(g, std::move(s), m.loop().get_executor());
    stream_job* sj = drv.get();
    auto created = m.create_block_job(job_id, job_type::stream, std::move(drv),
                                      {.auto_finalize = p.auto_finalize, .auto_dismiss = p.auto_dismiss}, p.speed);
    if (!created) {
        co_await undo_reopen();
        co_return created.error();
    }
    job& j = **created;
    if (auto r = sj->attach(j, filter, reopen); !r) {
        m.early_fail(j);
        co_await undo_reopen();
        co_return r.error();
    }
    m.start(j);
    logger()->info("stream '{}': into '{}' from {} down to {}", j.id(), top->name(),
                   bottom ? "'" + bottom->name() + "'" : std::string("nothing"),
                   base ? "base '" + base->name() + "'" : std::string("the end of the chain"));
    co_return qapi::result<void>{};
}

} // namespace bjd::jobs
