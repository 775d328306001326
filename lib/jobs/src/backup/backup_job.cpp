// SPDX-License-Identifier: MIT
// blockdev-backup (QEMU 7.2's blockdev.c do_backup_common, block/backup.c, block/block-copy.c
// and block/copy-before-write.c): the checks; the copy-before-write filter above the source,
// which copies the old data of a cluster to the target before a write changes it; and the
// copy for sync=full/top/bitmap, up to x-perf's max-workers chunks of up to max-chunk at once
// (sync=none copies only what the filter copies, until cancelled).
#include "bjd/jobs/backup.hpp"

#include "bjd/block/bitmaps.hpp"
#include "bjd/block/driver.hpp"
#include "bjd/block/filter_node.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/block/transaction.hpp"
#include "bjd/event_flag.hpp"
#include "bjd/io/buffer.hpp"
#include "bjd/jobs/job_driver.hpp"
#include "backup/drive_target.hpp"
#include "copy/chain.hpp"
#include "copy/copy_driver.hpp"
#include "copy/job_nodes.hpp"
#include "jobs_log.hpp"

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace bjd::jobs {

namespace {

/// QEMU's BLOCK_COPY_CLUSTER_SIZE_DEFAULT: the backup's cluster is at least 64 KiB, or the
/// target's cluster size if larger (block/block-copy.c block_copy_calculate_cluster_size).
constexpr std::uint64_t default_cluster = 64 << 10;

/// QEMU's BLOCK_COPY_MAX_BUFFER, BLOCK_COPY_MAX_MEM and the default of x-perf max-workers:
/// a job's copy request spans at most 1 MiB (or a cluster, if larger); at most 64 of them
/// run at once, holding at most 128 MiB of buffers.
constexpr std::uint64_t max_buffer = 1 << 20;
constexpr std::uint64_t max_memory = 128 << 20;
constexpr std::int64_t default_workers = 64;

/// What the job and its filter share (QEMU's BlockCopyState): which clusters still hold data
/// of the point in time the backup started and are not on the target yet.
class copy_state {
public:
    enum class state : std::uint8_t { todo, busy, done };

    copy_state(std::shared_ptr<block::node> source, std::shared_ptr<block::node> target, std::uint64_t cluster,
               asio::any_io_executor ex)
        : source_(std::move(source)), target_(std::move(target)), cluster_(cluster), len_(source_->size()),
          clusters_((len_ + cluster - 1) / cluster, state::todo), changed_(ex),
          clone_(source_->can_clone() && target_->can_clone())
    {
    }

    std::uint64_t cluster() const noexcept { return cluster_; }
    std::uint64_t length() const noexcept { return len_; }
    std::size_t clusters() const noexcept { return clusters_.size(); }
    bool done(std::size_t c) const noexcept { return clusters_[c] == state::done; }

    /// Called with the bytes each copied cluster adds to the job's progress.
    std::function<void(std::uint64_t)> on_copied;
    /// When set, writes through the filter no longer copy (the job ended).
    bool detached = false;
    /// compress: true: data goes to the target as compressed clusters (zeroes as zeroes).
    bool compress = false;

    /// Marks cluster `c` as not to be copied (sync=top: not allocated in the top image).
    /// Returns its bytes when it was still to do.
    std::uint64_t skip(std::size_t c)
    {
        if (clusters_[c] != state::todo)
            return 0;
        clusters_[c] = state::done;
        return bytes(c);
    }

    /// Copies the clusters of [first, last] that are still to do, waiting for those another
    /// request is copying. `in_source` tells on failure whether the read failed.
    asio::awaitable<result<void>> copy(std::size_t first, std::size_t last, bool& in_source)
    {
        for (std::size_t c = first; c <= last && c < clusters_.size(); ++c) {
            while (clusters_[c] == state::busy)
                co_await changed_.wait();
            if (clusters_[c] == state::done)
                continue;
            clusters_[c] = state::busy;
            auto r = co_await copy_one(c, in_source);
            clusters_[c] = r ? state::done : state::todo;
            changed_.notify_all();
            if (!r)
                co_return r;
            if (on_copied)
                on_copied(bytes(c));
        }
        co_return result<void>{};
    }

    /// Before a write to [offset, offset+length) reaches the source (QEMU's cbw_do_copy_before_write).
    asio::awaitable<result<void>> before_write(std::uint64_t offset, std::uint64_t length)
    {
        if (detached || length == 0 || offset >= len_)
            co_return result<void>{};
        const std::size_t first = offset / cluster_;
        const std::size_t last = (std::min(offset + length, len_) - 1) / cluster_;
        bool in_source = false;
        co_return co_await copy(first, last, in_source);
    }

    /// The first cluster of [from, end) still to do, and those right after it still to do,
    /// `most` at most: they become busy, for the caller to copy with copy_claimed. A count of
    /// 0 when none is left.
    std::pair<std::size_t, std::size_t> claim(std::size_t from, std::size_t end, std::size_t most)
    {
        end = std::min(end, clusters_.size());
        while (from < end && clusters_[from] != state::todo)
            ++from;
        std::size_t k = 0;
        while (from + k < end && k < most && clusters_[from + k] == state::todo)
            clusters_[from + k++] = state::busy;
        return {from, k};
    }

    /// Copies the clusters [first, first+count) the caller claimed, with one read and one
    /// write per extent of the source's block status, zeroes as write-zeroes (QEMU's
    /// block_copy_task_entry); a single cluster goes through copy_one. Each becomes done once
    /// on the target; on failure the rest are to do again. `buf` holds `count` clusters.
    asio::awaitable<result<void>> copy_claimed(std::size_t first, std::size_t count, std::span<std::byte> buf,
                                               bool& in_source)
    {
        const std::size_t end = first + count;
        for (std::size_t c = first; c < end;) {
            const std::uint64_t off = c * cluster_;
            const std::uint64_t n = std::min(end * cluster_, len_) - off;
            std::uint64_t m = n;
            result<void> r;
            if (end - c == 1) {
                r = co_await copy_one(c, in_source);
            } else {
                in_source = true;
                bool zero = false;
                if (auto st = co_await source_->block_status(off, n)) {
                    // A first cluster that is partly data is copied alone, as data.
                    const std::uint64_t whole = st->length >= n ? n : st->length / cluster_ * cluster_;
                    m = whole ? whole : cluster_;
                    zero = whole && (st->flags & block::status_zero);
                }
                if (zero) {
                    in_source = false;
                    r = co_await target_->write_zeroes(off, m, block::zero_flags{.may_unmap = true});
                } else {
                    r = co_await copy_data(off, buf.first(m), in_source);
                }
            }
            const std::size_t k = r ? (m + cluster_ - 1) / cluster_ : end - c;
            std::fill_n(clusters_.begin() + static_cast<std::ptrdiff_t>(c), k, r ? state::done : state::todo);
            changed_.notify_all();
            if (!r)
                co_return r;
            if (on_copied)
                on_copied(m);
            c += k;
        }
        co_return result<void>{};
    }

private:
    std::uint64_t bytes(std::size_t c) const noexcept { return std::min(cluster_, len_ - c * cluster_); }

    asio::awaitable<result<void>> copy_one(std::size_t c, bool& in_source)
    {
        const std::uint64_t off = c * cluster_;
        const std::uint64_t n = bytes(c);
        in_source = true;
        auto st = co_await source_->block_status(off, n);
        if (st && (st->flags & block::status_zero) && st->length >= n) {
            in_source = false;
            const block::zero_flags zf{.may_unmap = true};
            co_return co_await target_->write_zeroes(off, n, zf);
        }
        io::aligned_buffer buf(n);
        co_return co_await copy_data(off, buf.span().first(n), in_source);
    }

    /// The data at `off` to the target: by sharing the source's extents where the file
    /// system can (block::node::clone_to; a point-in-time copy all the same, since a later
    /// write to the source copies on write), else read into `data` and written.
    asio::awaitable<result<void>> copy_data(std::uint64_t off, std::span<std::byte> data, bool& in_source)
    {
        if (clone_ && !compress) {
            auto r = co_await source_->clone_to(off, data.size(), *target_, off);
            if (r) {
                in_source = false;
                co_return r;
            }
            // Refused (or failed): read and write from now on, this piece too, so that a
            // failing side is known and its error policy applies.
            if (std::exchange(clone_, false))
                logger()->info("backup of '{}': cannot share its extents with '{}' (reflink): {}; reading and "
                               "writing instead",
                               source_->name(), target_->name(), strerror_text(r.error()));
        }
        in_source = true;
        if (auto r = co_await source_->read(off, data); !r)
            co_return r;
        in_source = false;
        if (compress)
            co_return co_await target_->write_compressed(off, data);
        co_return co_await target_->write(off, data, false);
    }

    std::shared_ptr<block::node> source_;
    std::shared_ptr<block::node> target_;
    std::uint64_t cluster_;
    std::uint64_t len_;
    std::vector<state> clusters_;
    event_flag changed_;
    bool clone_;   ///< data goes by clone_to until the first refusal
};

/// QEMU's copy-before-write filter: above the source while the backup runs, with the source
/// as its "file" child and the target as its "target" child. Reads pass through; a write,
/// write-zeroes or discard first copies the old data of the clusters it touches.
class copy_before_write final : public block::filter_node {
public:
    copy_before_write(block::node_options o, std::shared_ptr<block::node> source, std::shared_ptr<block::node> target,
                      bool implicit)
        : filter_node(std::move(o), std::move(source), "file", implicit)
    {
        add_child("target", std::move(target));
    }

    void attach_state(std::shared_ptr<copy_state> s) { state_ = std::move(s); }

    /// Before the filter leaves the graph: it stops keeping other writers off the source,
    /// so that its parents can go back onto the source (QEMU's bdrv_cbw_drop).
    void stop_guarding()
    {
        guarding_ = false;
        if (auto r = refresh_permissions(); !r)
            logger()->warn("backup: filter '{}': {}", name(), r.error().desc);
    }

    std::string_view driver() const noexcept override { return "copy-before-write"; }

protected:
    /// QEMU's cbw_child_perm: the target is written; the source as a filter's child, but
    /// nobody else may write or resize it behind the filter's back.
    block::perm_pair child_permissions(const block::edge& e, block::perm_pair cumulative) const override
    {
        if (e.role() == "target")
            return {block::perm_write, block::perm_all & ~block::perm_resize};
        block::perm_pair p = block::filter_child_perms(cumulative);
        if (!guarding_)
            return p;
        if (p.perm & block::perm_write)
            p.perm |= block::perm_consistent_read;
        p.shared &= ~(block::perm_write | block::perm_resize);
        return p;
    }
    asio::awaitable<result<void>> do_read(std::uint64_t offset, std::span<std::byte> buf) override
    {
        co_return co_await below()->read(offset, buf);
    }
    asio::awaitable<result<void>> do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) override
    {
        if (auto s = state_)
            if (auto r = co_await s->before_write(offset, buf.size()); !r)
                co_return r;
        co_return co_await below()->write(offset, buf, fua);
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                                  block::zero_flags f) override
    {
        if (auto s = state_)
            if (auto r = co_await s->before_write(offset, length); !r)
                co_return r;
        co_return co_await below()->write_zeroes(offset, length, f);
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t offset, std::uint64_t length) override
    {
        if (auto s = state_)
            if (auto r = co_await s->before_write(offset, length); !r)
                co_return r;
        co_return co_await below()->discard(offset, length);
    }
    asio::awaitable<result<void>> do_flush() override { co_return co_await below()->flush(); }
    asio::awaitable<result<block::extent>> do_block_status(std::uint64_t offset, std::uint64_t length) override
    {
        co_return co_await below()->block_status(offset, length);
    }

private:
    std::shared_ptr<copy_state> state_;
    bool guarding_ = true;
};

struct backup_setup {
    block::graph* graph = nullptr;
    std::shared_ptr<block::node> source;
    std::shared_ptr<block::node> target;
    std::shared_ptr<copy_before_write> filter;
    qapi::mirror_sync_mode sync = qapi::mirror_sync_mode::full;
    qapi::blockdev_on_error on_source_error = qapi::blockdev_on_error::report;
    qapi::blockdev_on_error on_target_error = qapi::blockdev_on_error::report;
    std::uint64_t cluster = default_cluster;
    std::shared_ptr<block::named_bitmap> bitmap;   ///< sync=bitmap, or a bitmap-mode with full/top
    qapi::bitmap_sync_mode bitmap_mode = qapi::bitmap_sync_mode::on_success;
    std::uint64_t chunk = max_buffer;   ///< the most one copy request spans (a multiple of `cluster`)
    unsigned workers = default_workers;  ///< copy requests at once
    bool compress = false;
};

/// x-perf's max-chunk and max-workers as QEMU's block_copy_async takes them (0: no limit),
/// within its buffer and memory limits.
void copy_tuning(backup_setup& s, const std::optional<std::int64_t>& max_workers,
                 const std::optional<std::int64_t>& max_chunk)
{
    s.chunk = std::max(s.cluster, max_buffer);
    if (max_chunk && *max_chunk)
        s.chunk = std::min(s.chunk, static_cast<std::uint64_t>(*max_chunk) / s.cluster * s.cluster);
    const auto fit = static_cast<std::int64_t>(std::max<std::uint64_t>(1, max_memory / s.chunk));
    s.workers = static_cast<unsigned>(std::min(max_workers.value_or(default_workers), fit));
}

class backup_job final : public detail::copy_driver {
public:
    backup_job(backup_setup s, asio::any_io_executor ex) : copy_driver(std::move(ex)), s_(std::move(s)) {}
    ~backup_job() override { leave_graph(); }

    /// Takes the job's nodes (QEMU's backup_job_create: the filter as the main node, the
    /// target) and lets the filter copy from now on. On failure the filter is taken out.
    qapi::result<void> attach(job& j)
    {
        attached_ = true;
        auto& n = nodes_.emplace("backup job '" + j.id() + "'", "backup");
        qapi::result<void> r = n.hold(s_.filter, "main node");
        if (r)
            r = n.hold(s_.target, "target");
        if (!r) {
            leave_graph();
            return r;
        }
        state_ = std::make_shared<copy_state>(s_.source, s_.target, s_.cluster, ex_);
        state_->compress = s_.compress;
        std::uint64_t todo = state_->length();
        if (s_.bitmap) {
            // QEMU's bdrv_dirty_bitmap_create_successor: the bitmap is busy while the job runs
            // and records the writes made meanwhile; what it held is the job's to copy.
            s_.bitmap->set_busy(true);
            before_ = s_.bitmap->bits();
            s_.bitmap->bits().clear();
            if (s_.sync == qapi::mirror_sync_mode::bitmap)
                // backup_init_bcs_bitmap: only the clusters the bitmap marks.
                for (std::size_t c = 0; c < state_->clusters(); ++c) {
                    const std::uint64_t off = c * state_->cluster();
                    const std::uint64_t end = std::min(off + state_->cluster(), state_->length());
                    if (!before_->next_dirty_area(off, end))
                        todo -= state_->skip(c);
                }
        }
        state_->on_copied = [&j](std::uint64_t n) { j.progress_done(n); };
        s_.filter->attach_state(state_);
        guests_.watch(s_.filter, "backup job '" + j.id() + "'");
        limiter_.set_speed(j.speed());
        j.progress_set_remaining(todo);
        remaining_ = todo;
        return {};
    }

    asio::awaitable<qapi::result<void>> run(job& j) override
    {
        if (s_.sync == qapi::mirror_sync_mode::none) {
            // QEMU's backup_run: the filter does every copy; the job waits to be cancelled.
            while (!j.is_cancelled())
                co_await j.yield();
            co_return qapi::result<void>{};
        }
        const std::uint64_t cl = state_->cluster();
        // One buffer per worker, allocated when first used, registered with the I/O engine.
        std::vector<io::aligned_buffer> bufs(s_.workers);
        auto piece = [&](unsigned slot, std::uint64_t offset, std::uint64_t n) -> asio::awaitable<step> {
            if (!bufs[slot])
                bufs[slot] = io::make_registered_buffer(s_.graph->engine(), s_.chunk);
            step st;
            st.r = co_await state_->copy_claimed(offset / cl, (n + cl - 1) / cl, bufs[slot].span(), st.in_source);
            st.length = offset + n;   // where a step that ignores this failure goes on
            co_return st;
        };
        // A step claims runs of clusters still to do and copies them, `workers` at once; then
        // copies what the filter was copying when the step passed it and could not (QEMU's
        // block_copy_dirty_clusters). Failed clusters stay to do.
        auto do_step = [&](std::uint64_t offset, std::uint64_t n) -> asio::awaitable<step> {
            const std::size_t first = offset / cl;
            const std::size_t end = std::min<std::size_t>(state_->clusters(), (offset + n + cl - 1) / cl);
            if (s_.sync == qapi::mirror_sync_mode::top)
                co_await skip_unallocated(j, first, end);
            step st;
            st.length = n;
            detail::piece_pool pool(ex_, s_.workers, piece, yield_to_guests(s_.chunk, s_.workers));
            for (std::size_t c = first; c < end && !j.is_cancelled();) {
                if (!co_await pool.ready())
                    break;
                auto [a, k] = state_->claim(c, end, s_.chunk / cl);
                if (k == 0)
                    break;
                pool.spawn(a * cl, std::min<std::uint64_t>(k * cl, state_->length() - a * cl));
                st.copied = true;
                c = a + k;
            }
            if (auto failed = co_await pool.join()) {
                st.r = failed->r;
                st.in_source = failed->in_source;
                st.length = failed->length - offset;
                st.copied = false;
                co_return st;
            }
            if (!j.is_cancelled())
                st.r = co_await state_->copy(first, end - 1, st.in_source);
            co_return st;
        };
        // Under a speed limit one cluster at a time; an ignored failure leaves its clusters
        // uncopied and the job goes on.
        const detail::step_policy policy{.on_source_error = s_.on_source_error,
                                 .on_target_error = s_.on_target_error,
                                 .step = 2 * s_.chunk * s_.workers,
                                 .throttled_step = cl,
                                 .ignored_fails_job = false,
                                 .counts_progress = false};
        auto r = co_await copy_loop(j, state_->length(), policy, do_step);
        if (r && !j.is_cancelled())
            // A finished backup is on disk, and its image complete for readers as soon as
            // the job's events say so (the target closes in the background afterwards).
            if (auto f = co_await s_.target->flush(); !f) {
                j.set_error_errno(f.error().value());
                co_return qapi::generic(strerror_text(f.error()));
            }
        co_return r;
    }

    qapi::result<void> prepare(job&) override
    {
        leave_graph();
        return {};
    }
    void commit(job&) override { finish_bitmap(true); }
    void abort(job&) override
    {
        leave_graph();
        finish_bitmap(false);
    }
    void clean(job&) override
    {
        leave_graph();
        finish_bitmap(false);
    }

private:
    /// sync=top: the clusters of [first, end) that the top image does not hold are not copied
    /// (QEMU's block_copy_reset_unallocated), and the progress total shrinks by them.
    asio::awaitable<void> skip_unallocated(job& j, std::size_t first, std::size_t end)
    {
        const std::uint64_t cl = state_->cluster();
        const std::uint64_t stop = std::min<std::uint64_t>(end * cl, state_->length());
        bool skipped = false;
        for (std::uint64_t pos = first * cl; pos < stop;) {
            auto a = co_await detail::allocated_between(s_.source.get(), detail::chain_next(*s_.source), pos,
                                                        stop - pos);
            if (!a || a->second == 0)
                break;   // unknown: copied
            const std::uint64_t extent_end = pos + a->second;
            if (!a->first)
                for (std::size_t c = (pos + cl - 1) / cl;
                     c < end && std::min<std::uint64_t>((c + 1) * cl, state_->length()) <= extent_end; ++c) {
                    remaining_ -= state_->skip(c);
                    skipped = true;
                }
            pos = extent_end;
        }
        if (skipped)
            j.progress_set_remaining(remaining_ - std::min(remaining_, j.progress_current()));
    }

    /// QEMU's backup_cleanup_sync_bitmap. The bitmap now holds the writes made while the job
    /// ran. It keeps only them when the job succeeded (or always, with bitmap-mode=always);
    /// otherwise, or with bitmap-mode=never, what it held before comes back. A failed job with
    /// bitmap-mode=always also marks again what was not copied.
    void finish_bitmap(bool success)
    {
        if (!s_.bitmap || !before_)
            return;
        const auto mode = s_.bitmap_mode;
        const bool sync = (success || mode == qapi::bitmap_sync_mode::always) && mode != qapi::bitmap_sync_mode::never;
        if (!sync)
            s_.bitmap->bits().merge(*before_);
        if (!success && mode == qapi::bitmap_sync_mode::always && state_)
            for (std::size_t c = 0; c < state_->clusters(); ++c)
                if (!state_->done(c)) {
                    const std::uint64_t off = c * state_->cluster();
                    s_.bitmap->bits().set(off, std::min(state_->cluster(), state_->length() - off));
                }
        s_.bitmap->set_busy(false);
        before_.reset();
    }

    /// QEMU's backup_clean (bdrv_cbw_drop): the filter goes, its parents back on the source.
    void leave_graph()
    {
        if (state_) {
            state_->detached = true;
            state_->on_copied = nullptr;
        }
        if (!attached_)
            return;
        attached_ = false;
        guests_.watch(nullptr, {});
        nodes_.reset();
        s_.filter->stop_guarding();
        detail::remove_filter(*s_.graph, ex_, s_.filter, "backup");
    }

    backup_setup s_;
    std::optional<detail::job_nodes> nodes_;
    std::shared_ptr<copy_state> state_;
    std::optional<block::dirty_bitmap> before_;   ///< the bitmap's bits when the job started
    std::uint64_t remaining_ = 0;                 ///< bytes the job copies in all (progress total)
    bool attached_ = false;
};

std::string sync_name(qapi::mirror_sync_mode m) { return std::string(qapi::to_string(m)); }

/// Checks `in` in QEMU 7.2's order, puts the filter above the source and creates the job,
/// not started.
asio::awaitable<qapi::result<std::shared_ptr<job>>> create_backup(manager& m, block::graph& g,
                                                                  const backup_params& in,
                                                                  std::shared_ptr<job_txn> txn)
{
    backup_params p = in;
    // blockdev.c blockdev_backup_prepare: both names as device or node-name.
    auto src = g.lookup(p.device, p.device);
    if (!src)
        co_return src.error();
    auto tgt = g.lookup(p.target, p.target);
    if (!tgt)
        co_return tgt.error();
    std::shared_ptr<block::node> source = *src;
    std::shared_ptr<block::node> target = *tgt;

    // do_backup_common.
    using qapi::mirror_sync_mode;
    if ((p.sync == mirror_sync_mode::bitmap || p.sync == mirror_sync_mode::incremental) && !p.bitmap)
        co_return qapi::generic("must provide a valid bitmap name for '" + sync_name(p.sync) + "' sync mode");
    if (p.sync == mirror_sync_mode::incremental) {
        if (p.bitmap_mode && *p.bitmap_mode != qapi::bitmap_sync_mode::on_success)
            co_return qapi::generic("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'");
        p.sync = mirror_sync_mode::bitmap;
        p.bitmap_mode = qapi::bitmap_sync_mode::on_success;
    }
    if (p.bitmap) {
        auto bm = source->find_bitmap(*p.bitmap);
        if (!bm)
            co_return qapi::generic("Bitmap '" + *p.bitmap + "' could not be found");
        if (!p.bitmap_mode)
            co_return qapi::generic("Bitmap sync mode must be given when providing a bitmap");
        if (auto r = block::check_bitmap(*bm, block::bitmap_usable); !r)
            co_return r.error();
        if (p.sync == mirror_sync_mode::none)
            co_return qapi::generic("sync mode 'none' does not produce meaningful bitmap outputs");
        if (*p.bitmap_mode == qapi::bitmap_sync_mode::never && p.sync != mirror_sync_mode::bitmap)
            co_return qapi::generic("Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '" +
                                    sync_name(p.sync) + "'");
    }
    if (!p.bitmap && p.bitmap_mode)
        co_return qapi::generic("Cannot specify bitmap sync mode without a bitmap");

    // backup_job_create.
    if (source == target)
        co_return qapi::generic("Source and target cannot be the same");
    // QEMU names the target's drive, which a node added with blockdev-add does not have.
    if (p.compress && !target->supports_compressed_writes())
        co_return qapi::generic("Compression is not supported for this drive " + target->device_name());
    if (auto r = source->check_op(block::block_op::backup_source); !r)
        co_return r.error();
    if (auto r = target->check_op(block::block_op::backup_target); !r)
        co_return r.error();
    if (p.max_workers && (*p.max_workers < 1 || *p.max_workers > 2147483647))
        co_return qapi::generic("max-workers must be between 1 and 2147483647");
    if (p.max_chunk && *p.max_chunk < 0)
        co_return qapi::generic("max-chunk must be zero (which means no limit) or positive");
    if (source->size() != target->size())
        co_return qapi::generic("Source and target image have different sizes");

    // bdrv_cbw_append: the filter above the source (its errors are "Could not create node: ").
    auto node_err = [](const qapi::error& e) { return qapi::generic("Could not create node: " + e.desc); };
    if (p.filter_node_name)
        if (auto r = detail::check_filter_name(g, *p.filter_node_name); !r)
            co_return node_err(r.error());
    if (target->read_only())
        co_return qapi::generic("Could not create node: Block node is read-only");
    backup_setup s;
    s.graph = &g;
    s.source = source;
    s.target = target;
    s.sync = p.sync;
    s.compress = p.compress;
    s.on_source_error = p.on_source_error;
    s.on_target_error = p.on_target_error;
    if (p.bitmap) {
        s.bitmap = source->find_bitmap(*p.bitmap);
        s.bitmap_mode = *p.bitmap_mode;
    }
    s.cluster = std::max<std::uint64_t>(default_cluster, target->cluster_size());
    if (p.max_chunk && *p.max_chunk && static_cast<std::uint64_t>(*p.max_chunk) < s.cluster)
        co_return qapi::generic("Required max-chunk (" + std::to_string(*p.max_chunk) +
                                ") is less than backup cluster size (" + std::to_string(s.cluster) + ")");
    copy_tuning(s, p.max_workers, p.max_chunk);
    if (s.compress)
        s.chunk = s.cluster;   // compressed clusters are written one by one (copy_one), as QEMU does
    block::node_options fo;
    fo.name = p.filter_node_name ? *p.filter_node_name : g.auto_name();
    s.filter = std::make_shared<copy_before_write>(fo, source, target, !p.filter_node_name);
    auto filter = s.filter;
    if (auto r = detail::insert_filter(g, filter, *source); !r) {
        for (const auto& e : filter->children())
            e->detach();
        co_return node_err(r.error());
    }
    auto drv = std::make_unique<backup_job>(std::move(s), m.loop().get_executor());
    backup_job* bj = drv.get();
    // QEMU's block_job_create on the filter: its job id defaults to the filter's device name,
    // which is none.
    const std::string job_id = p.job_id ? *p.job_id : std::string();
    auto created = m.create_block_job(job_id, job_type::backup, std::move(drv),
                                      {.auto_finalize = p.auto_finalize, .auto_dismiss = p.auto_dismiss}, p.speed,
                                      std::move(txn));
    if (!created) {
        // The driver never touched the graph: the filter goes here (QEMU's bdrv_cbw_drop).
        filter->stop_guarding();
        detail::remove_filter(g, m.loop().get_executor(), filter, "backup");
        co_return created.error();
    }
    job& j = **created;
    if (auto r = bj->attach(j); !r) {
        m.early_fail(j);
        co_return r.error();
    }
    logger()->info("backup '{}': '{}' to '{}', sync {}", j.id(), source->name(), target->name(), sync_name(p.sync));
    co_return *created;
}

/// QEMU's blockdev_backup_* and drive_backup_* transaction callbacks. With `drive`, prepare
/// first makes the target image, which goes away with the job (or at once if none is made).
class backup_txn_action final : public block::transaction_action {
public:
    backup_txn_action(manager& m, block::graph& g, backup_params p, std::shared_ptr<job_txn> txn,
                      std::optional<drive_backup_params> drive = std::nullopt)
        : m_(m), g_(g), p_(std::move(p)), txn_(std::move(txn)), drive_(std::move(drive))
    {
    }
    asio::awaitable<qapi::result<void>> prepare() override
    {
        std::shared_ptr<block::node> target;
        if (drive_) {
            auto t = co_await detail::open_drive_backup_target(g_, *drive_);
            if (!t)
                co_return t.error();
            target = *t;
            p_ = drive_->backup;
        }
        auto j = co_await create_backup(m_, g_, p_, txn_);
        if (target) {
            const auto ex = m_.loop().get_executor();
            if (j)
                g_.close_when_unused(ex, target);
            else
                g_.close_later(ex, target);
        }
        if (!j)
            co_return j.error();
        job_ = *j;
        co_return qapi::result<void>{};
    }
    asio::awaitable<void> commit() override
    {
        m_.start(*job_);
        co_return;
    }
    void abort() override
    {
        // A grouped transaction may already have ended this job with a sibling's.
        if (job_ && job_->status() == job_status::created)
            (void)job_->user_cancel(true);
    }

private:
    manager& m_;
    block::graph& g_;
    backup_params p_;
    std::shared_ptr<job_txn> txn_;
    std::optional<drive_backup_params> drive_;
    std::shared_ptr<job> job_;
};

/// The command: a transaction of the one action, as QEMU runs it.
asio::awaitable<qapi::result<void>> run_alone(block::graph& g, std::unique_ptr<block::transaction_action> a)
{
    std::vector<std::unique_ptr<block::transaction_action>> actions;
    actions.push_back(std::move(a));
    co_return co_await block::run_transaction(g.gate(), std::move(actions));
}

} // namespace

asio::awaitable<qapi::result<void>> start_backup(manager& m, block::graph& g, const backup_params& p)
{
    co_return co_await run_alone(g, backup_action(m, g, p, nullptr));
}

std::unique_ptr<block::transaction_action> backup_action(manager& m, block::graph& g, backup_params p,
                                                         std::shared_ptr<job_txn> txn)
{
    return std::make_unique<backup_txn_action>(m, g, std::move(p), std::move(txn));
}

asio::awaitable<qapi::result<void>> start_drive_backup(manager& m, block::graph& g, const drive_backup_params& p)
{
    co_return co_await run_alone(g, drive_backup_action(m, g, p, nullptr));
}

std::unique_ptr<block::transaction_action> drive_backup_action(manager& m, block::graph& g, drive_backup_params p,
                                                               std::shared_ptr<job_txn> txn)
{
    backup_params b = p.backup;
    return std::make_unique<backup_txn_action>(m, g, std::move(b), std::move(txn), std::move(p));
}

} // namespace bjd::jobs
