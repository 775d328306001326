// SPDX-License-Identifier: MIT
// block-stream (QEMU 7.2's blockdev.c qmp_block_stream and block/stream.c): the checks, the
// copy loop, and the end, where the base becomes the node's backing image.
#include "bjd/jobs/stream.hpp"

#include "bjd/block/copy_on_read.hpp"
#include "bjd/block/create.hpp"
#include "bjd/block/driver.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/block/reopen.hpp"
#include "bjd/jobs/job_driver.hpp"
#include "bjd/log.hpp"
#include "copy/chain.hpp"
#include "copy/job_nodes.hpp"
#include "copy/pacing.hpp"

#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace bjd::jobs {

namespace {

/// QEMU's STREAM_CHUNK: how much one iteration looks at.
constexpr std::uint64_t chunk = 512 << 10;

auto logger() { return log::get("jobs"); }

using detail::chain_contains;
using detail::chain_next;
using detail::find_backing_image;

struct stream_setup {
    block::graph* graph = nullptr;
    std::shared_ptr<block::node> top;             ///< the node filled
    std::shared_ptr<block::node> base;            ///< its backing image afterwards (null: none)
    std::shared_ptr<block::node> bottom;          ///< the lowest node copied from; null: nothing to copy
    std::shared_ptr<block::copy_on_read> filter;
    std::optional<std::string> backing_file;
    qapi::blockdev_on_error on_error = qapi::blockdev_on_error::report;
    bool reopened = false;                        ///< `top` was read-only: read-only again at the end
};

class stream_job final : public job_driver {
public:
    explicit stream_job(stream_setup s, asio::any_io_executor ex) : s_(std::move(s)), ex_(std::move(ex)) {}
    ~stream_job() override { leave_graph(); }

    /// Puts the filter above the node and takes the job's nodes: the filter (its main node),
    /// the node, and the nodes between it and the base, which go away at the end. On failure
    /// the graph is as it was.
    qapi::result<void> attach(job& j)
    {
        if (auto r = detail::insert_filter(*s_.graph, s_.filter, *s_.top); !r)
            return r;
        attached_ = true;
        nodes_.emplace("stream job '" + j.id() + "'", "stream");
        // References that take nothing: they cannot conflict.
        (void)nodes_->hold(s_.filter, "main node");
        (void)nodes_->hold(s_.top, "target");
        for (block::node* i = chain_next(*s_.top); i && i != s_.base.get(); i = chain_next(*i))
            (void)nodes_->hold(i->shared_from_this(), "intermediate node");
        limiter_.set_speed(j.speed());
        return {};
    }

    asio::awaitable<qapi::result<void>> run(job& j) override
    {
        if (!s_.bottom)
            co_return qapi::result<void>{};   // the base already is the backing image
        const std::uint64_t len = s_.top->size();
        j.progress_set_remaining(len);
        std::optional<std::error_code> failure;
        std::chrono::nanoseconds delay{0};
        for (std::uint64_t offset = 0, n = 0; offset < len; offset += n) {
            co_await j.sleep(delay);
            if (j.is_cancelled())
                break;
            n = 0;
            bool copy = false;
            result<void> r;
            auto st = co_await s_.top->block_status(offset, std::min(chunk, len - offset));
            if (!st) {
                r = st.error();
            } else {
                n = st->length;
                if (!(st->flags & block::status_allocated)) {
                    // Data between the node's backing image and the bottom (inclusive) is copied.
                    auto above = co_await detail::allocated_between(chain_next(*s_.top), chain_next(*s_.bottom),
                                                                    offset, n);
                    if (above) {
                        copy = above->first;
                        n = above->second;
                    } else {
                        r = above.error();
                    }
                }
            }
            if (r && copy)
                r = co_await s_.filter->populate(offset, n);
            if (!r) {
                auto action = j.error_action(s_.on_error, true, r.error().value());
                if (action == qapi::block_error_action::stop) {
                    n = 0;   // the same range again once resumed
                    continue;
                }
                if (!failure)
                    failure = r.error();
                if (action == qapi::block_error_action::report)
                    break;
            }
            j.progress_done(n);
            delay = std::chrono::nanoseconds(0);
            if (copy) {
                limiter_.charge(n);
                delay = limiter_.delay();
            }
        }
        if (failure) {
            // An error that was ignored still keeps the backing chain as it is.
            j.set_error_errno(failure->value());
            co_return qapi::generic(strerror_text(*failure));
        }
        if (j.is_cancelled())
            co_return qapi::result<void>{};
        // Everything is in the node: make its data durable, then let its header name the base
        // (a crash in between leaves a header naming the old chain, which reads the same).
        if (auto f = co_await s_.top->flush(); !f) {
            j.set_error_errno(f.error().value());
            co_return qapi::generic(strerror_text(f.error()));
        }
        if (s_.top->cow_backing() && block::qcow2_info(*s_.top)) {
            std::string file, fmt;
            if (s_.base) {
                file = s_.backing_file ? *s_.backing_file : s_.base->filename();
                fmt = std::string(s_.base->driver());
            }
            if (auto h = co_await block::qcow2_change_backing_file(*s_.top, file, fmt); !h) {
                j.set_error_errno(h.error().value());
                co_return qapi::generic(strerror_text(h.error()));
            }
        }
        co_return qapi::result<void>{};
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
            s_.graph->close_later(ex_, old);
        return {};
    }

    void abort(job&) override { leave_graph(); }

    void clean(job& j) override
    {
        leave_graph();
        if (s_.reopened) {
            // Back to read-only, as it was before the job (QEMU's stream_clean).
            detail::restore_read_only(ex_, s_.top, "stream '" + j.id() + "'");
            s_.reopened = false;
        }
    }

    void set_speed(job& j, std::int64_t speed) override
    {
        limiter_.set_speed(speed);
        if (j.sleeping_timed())
            j.enter();
    }

private:
    void leave_graph()
    {
        if (!attached_)
            return;
        attached_ = false;
        nodes_.reset();
        detail::remove_filter(*s_.graph, ex_, s_.filter, "stream");
    }

    stream_setup s_;
    asio::any_io_executor ex_;
    detail::rate_limiter limiter_;
    std::optional<detail::job_nodes> nodes_;
    bool attached_ = false;
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
    s.graph = &g;
    s.top = top;
    s.base = base;
    s.bottom = bottom;
    s.filter = std::make_shared<block::copy_on_read>(fo, top, !p.filter_node_name, m.loop().get_executor());
    s.backing_file = p.backing_file;
    s.on_error = p.on_error;
    s.reopened = reopen;
    auto drv = std::make_unique<stream_job>(std::move(s), m.loop().get_executor());
    stream_job* sj = drv.get();
    auto created = m.create_block_job(job_id, job_type::stream, std::move(drv),
                                      {.auto_finalize = p.auto_finalize, .auto_dismiss = p.auto_dismiss}, p.speed);
    if (!created) {
        co_await undo_reopen();
        co_return created.error();
    }
    job& j = **created;
    if (auto r = sj->attach(j); !r) {
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
