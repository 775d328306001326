// SPDX-License-Identifier: MIT
// block-commit (QEMU 7.2's blockdev.c qmp_block_commit, block/commit.c and commit_active_start
// in block/mirror.c): the checks; for an intermediate image the commit_top filter above it, the
// copy loop into the base, and the end, where the image above it gets the base as its backing
// image; for the active layer a mirror job of type commit into the base.
#include "bjd/jobs/commit.hpp"

#include "bjd/block/driver.hpp"
#include "bjd/block/filter_node.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/block/reopen.hpp"
#include "bjd/io/buffer.hpp"
#include "copy/chain.hpp"
#include "copy/chain_job.hpp"
#include "copy/job_nodes.hpp"
#include "mirror/mirror_job.hpp"
#include "jobs_log.hpp"

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace bjd::jobs {

namespace {

/// QEMU's COMMIT_BUFFER_SIZE: how much one iteration looks at and copies.
constexpr std::uint64_t chunk = 512 << 10;

using detail::chain_contains;
using detail::chain_next;
using detail::find_backing_image;
using detail::is_root;

/// QEMU's commit_top driver: sits above the committed image while the job runs, passes reads
/// through, and takes no permission on it (the job's own references do).
class commit_top final : public block::filter_node {
public:
    commit_top(block::node_options o, std::shared_ptr<block::node> child, bool implicit)
        : filter_node(std::move(o), std::move(child), "backing", implicit)
    {
    }

    std::string_view driver() const noexcept override { return "commit_top"; }

protected:
    block::perm_pair child_permissions(const block::edge&, block::perm_pair) const override
    {
        return {0, block::perm_all};
    }
    asio::awaitable<result<void>> do_read(std::uint64_t offset, std::span<std::byte> buf) override
    {
        co_return co_await below()->read(offset, buf);
    }
    /// Nobody writes an image through its overlay's backing link.
    asio::awaitable<result<void>> do_write(std::uint64_t, std::span<const std::byte>, bool) override
    {
        co_return std::make_error_code(std::errc::operation_not_supported);
    }
    asio::awaitable<result<block::extent>> do_block_status(std::uint64_t offset, std::uint64_t length) override
    {
        co_return co_await below()->block_status(offset, length);
    }
};

struct commit_setup {
    std::shared_ptr<block::node> overlay;   ///< the image above `top`: its backing image becomes `base`
    std::shared_ptr<block::node> top;       ///< the highest image committed
    std::shared_ptr<block::node> base;      ///< receives the data
    std::optional<std::string> backing_file;
    qapi::blockdev_on_error on_error = qapi::blockdev_on_error::report;
};

class commit_job final : public detail::chain_job {
public:
    commit_job(block::graph& g, commit_setup s, asio::any_io_executor ex)
        : chain_job(g, std::move(ex), "commit"), s_(std::move(s))
    {
    }

    /// Puts `filter` above `top` and takes the job's nodes: the filter, `top` and the nodes
    /// down to the base, the base (written) and the overlay (QEMU's commit_start). On failure
    /// the graph is as it was. `base_reopened`: read-only again at the end.
    qapi::result<void> attach(job& j, std::shared_ptr<commit_top> filter, bool base_reopened)
    {
        auto entered = enter_graph(j, filter, *s_.top);
        if (!entered)
            return entered.error();
        if (base_reopened)
            reopened(s_.base);
        // Job references that block the nodes, and the job's own I/O on `top` (read) and the
        // base (written), which make blockdev-del answer "Node X is in use".
        detail::job_nodes& n = **entered;
        qapi::result<void> r = n.hold(filter, "main node");
        for (block::node* i = s_.top.get(); r && i && i != s_.base.get(); i = chain_next(*i))
            r = n.hold(i->shared_from_this(), "intermediate node");
        if (r)
            r = n.hold(s_.overlay, "overlay of top");
        if (r)
            r = n.hold(s_.base, "base");
        if (r)
            r = n.use(s_.top, "top", 0);
        if (r)
            r = n.use(s_.base, "base", block::perm_consistent_read | block::perm_write | block::perm_resize);
        if (!r)
            leave_graph();
        return r;
    }

    asio::awaitable<qapi::result<void>> run(job& j) override
    {
        const std::uint64_t len = s_.top->size();
        if (s_.base->size() < len)
            if (auto r = co_await s_.base->truncate(len); !r) {
                j.set_error_errno(r.error().value());
                co_return qapi::generic(strerror_text(r.error()));
            }
        auto bufs = piece_buffers();
        auto copy_piece = [&](unsigned slot, std::uint64_t offset, std::uint64_t n) -> asio::awaitable<step> {
            step st;
            auto data = bufs[slot].span().first(n);
            st.r = co_await s_.top->read(offset, data);
            if (st.r) {
                st.in_source = false;
                st.r = co_await s_.base->write(offset, data);
            }
            co_return st;
        };
        // Data in `top` or the images below it, down to the base, goes into the base.
        auto copy = [&](std::uint64_t offset, std::uint64_t n) -> asio::awaitable<step> {
            auto above = co_await detail::allocated_between(s_.top.get(), s_.base.get(), offset, n);
            if (!above) {
                step st;
                st.r = above.error();
                co_return st;
            }
            if (!above->first) {
                step st;
                st.length = above->second;
                co_return st;
            }
            co_return co_await in_pieces(offset, above->second, copy_piece);
        };
        if (auto r = co_await copy_loop(j, len, chain_policy(chunk, s_.on_error), copy); !r)
            co_return r;
        if (j.is_cancelled())
            co_return qapi::result<void>{};
        co_return co_await write_chain(j, *s_.base, s_.overlay.get(), s_.base.get(), s_.backing_file);
    }

    /// Graph changes of QEMU's commit_prepare (bdrv_drop_intermediate): the filter goes, and
    /// the base becomes the overlay's backing image; the images in between nobody else holds
    /// are closed.
    qapi::result<void> prepare(job& j) override
    {
        leave_graph();
        std::shared_ptr<block::node> old = s_.top;
        (void)block::set_qcow2_backing(*s_.overlay, nullptr);
        if (auto r = block::set_qcow2_backing(*s_.overlay, s_.base); !r) {
            logger()->error("commit '{}': cannot attach '{}' below '{}': {}", j.id(), s_.base->name(),
                            s_.overlay->name(), r.error().desc);
            (void)block::set_qcow2_backing(*s_.overlay, old);
            return qapi::generic(std::strerror(EPERM));
        }
        logger()->info("commit '{}': '{}' now has '{}' as its backing image", j.id(), s_.overlay->name(),
                       s_.base->name());
        if (!old->monitor_owned())
            graph_.close_later(ex_, old);
        return {};
    }

private:
    commit_setup s_;
};

/// Commit of the active layer (QEMU's commit_active_start): a mirror of `top` into `base`,
/// which is in its own chain. It reports READY once `base` holds everything, keeps it in step
/// with new writes, and on block-job-complete puts `base` in `top`'s place, read-write.
asio::awaitable<qapi::result<void>> start_active_commit(manager& m, block::graph& g, const commit_params& p,
                                                        const std::string& job_id,
                                                        const std::shared_ptr<block::node>& top,
                                                        const std::shared_ptr<block::node>& base)
{
    // The base is written: reopen it read-write first, as QEMU does before the mirror's checks.
    const bool reopen = base->read_only();
    if (reopen)
        if (auto r = co_await block::reopen_read_only(*base, false); !r)
            co_return r.error();
    qapi::result<void> r;
    if (p.filter_node_name)
        r = detail::check_filter_name(g, *p.filter_node_name);
    if (r) {
        detail::mirror_setup s;
        s.graph = &g;
        s.source = top;
        s.target = base;
        s.sync = qapi::mirror_sync_mode::top;
        s.on_source_error = p.on_error;
        s.on_target_error = p.on_error;
        s.granularity = default_granularity(base->cluster_size());
        s.target_is_backing = true;
        s.target_reopened = reopen;
        s.type = job_type::commit;
        r = detail::launch(m, std::move(s), job_id, {.auto_finalize = p.auto_finalize, .auto_dismiss = p.auto_dismiss},
                           p.speed, p.filter_node_name);
    }
    if (!r && reopen)
        (void)co_await block::reopen_read_only(*base, true);
    co_return r;
}

} // namespace

asio::awaitable<qapi::result<void>> start_commit(manager& m, block::graph& g, const commit_params& p)
{
    auto found = g.lookup(p.device);
    if (!found)
        co_return qapi::error{qapi::error_class::device_not_found, "Device '" + p.device + "' not found", {}};
    std::shared_ptr<block::node> root = *found;
    if (!is_root(*root))
        co_return qapi::generic("Need a root block node");
    if (auto r = root->check_op(block::block_op::other); !r)   // QEMU's COMMIT_SOURCE
        co_return r.error();

    std::shared_ptr<block::node> top = root;
    if (p.top && p.top_node)
        co_return qapi::generic("'top-node' and 'top' are mutually exclusive");
    if (p.top_node) {
        auto t = g.lookup(std::nullopt, p.top_node);
        if (!t)
            co_return t.error();
        top = *t;
        if (!chain_contains(*root, top.get()))
            co_return qapi::generic("'" + *p.top_node + "' is not in this backing file chain");
    } else if (p.top && *p.top != root->filename()) {
        top = find_backing_image(*root, *p.top);
        if (!top)
            co_return qapi::generic("Top image file " + *p.top + " not found");
    }

    std::shared_ptr<block::node> base;
    if (p.base && p.base_node)
        co_return qapi::generic("'base-node' and 'base' are mutually exclusive");
    if (p.base_node) {
        auto b = g.lookup(std::nullopt, p.base_node);
        if (!b)
            co_return b.error();
        base = *b;
        if (!chain_contains(*top, base.get()))
            co_return qapi::generic("'" + *p.base_node + "' is not in this backing file chain");
    } else if (p.base) {
        base = find_backing_image(*top, *p.base);
        if (!base)
            co_return qapi::generic("Can't find '" + *p.base + "' in the backing chain");
    } else {
        // QEMU's bdrv_find_base: the bottom of the chain (which may be `top` itself).
        for (block::node* i = top.get(); i; i = chain_next(*i))
            base = i->shared_from_this();
        if (!base)
            co_return qapi::generic("There is no backimg image");   // sic, QEMU's text
    }
    for (block::node* i = top.get(); i && i != chain_next(*base); i = chain_next(*i))
        if (auto r = i->check_op(block::block_op::commit_target); !r)
            co_return r.error();
    if (top == base)
        co_return qapi::generic("cannot commit an image into itself");

    const std::string job_id = p.job_id ? *p.job_id : (g.drives().find(p.device) ? p.device : std::string());
    if (top == root) {
        if (p.backing_file)
            co_return qapi::generic("'backing-file' specified, but 'top' is the active layer");
        co_return co_await start_active_commit(m, g, p, job_id, top, base);
    }
    std::shared_ptr<block::node> overlay;
    for (block::node* i = root.get(); i; i = chain_next(*i))
        if (chain_next(*i) == top.get())
            overlay = i->shared_from_this();
    if (auto r = overlay->check_op(block::block_op::commit_target); !r)
        co_return r.error();

    if (auto r = check_job_id(job_id); !r)
        co_return r.error();
    commit_setup s;
    s.overlay = overlay;
    s.top = top;
    s.base = base;
    s.backing_file = p.backing_file;
    s.on_error = p.on_error;
    auto drv = std::make_unique<commit_job>(g, std::move(s), m.loop().get_executor());
    commit_job* cj = drv.get();
    auto created = m.create_block_job(job_id, job_type::commit, std::move(drv),
                                      {.auto_finalize = p.auto_finalize, .auto_dismiss = p.auto_dismiss}, p.speed);
    if (!created)
        co_return created.error();
    job& j = **created;

    // The filter, after the job as QEMU creates it (its name errors end the job).
    block::node_options fo;
    fo.name = p.filter_node_name ? *p.filter_node_name : g.auto_name();
    fo.read_only = true;
    if (p.filter_node_name)
        if (auto r = detail::check_filter_name(g, *p.filter_node_name); !r) {
            m.early_fail(j);
            co_return r.error();
        }
    // The base is written: reopen it read-write for the job.
    const bool reopen = base->read_only();
    if (reopen)
        if (auto r = co_await block::reopen_read_only(*base, false); !r) {
            m.early_fail(j);
            co_return r.error();
        }
    if (auto r = cj->attach(j, std::make_shared<commit_top>(fo, top, !p.filter_node_name), reopen); !r) {
        m.early_fail(j);
        if (reopen)
            (void)co_await block::reopen_read_only(*base, true);
        co_return r.error();
    }
    m.start(j);
    logger()->info("commit '{}': '{}' down to base '{}'", j.id(), top->name(), base->name());
    co_return qapi::result<void>{};
}

} // namespace bjd::jobs
