// SPDX-License-Identifier: MIT
// qcow2: writes (in place or allocating with copy-on-write), write_zeroes and discard.
#include "node.hpp"

#include "bjd/log.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cstring>

namespace bjd::block::qcow2 {

namespace {

/// Largest allocation made for one run of a write (bounds the bounce buffer).
constexpr std::uint64_t max_alloc_bytes = 8ull << 20;

bool in_place(const mapping& m) { return m.k == kind::normal && m.copied; }

} // namespace

bool qcow2_node::overlaps_allocation(std::uint64_t offset, std::uint64_t length) const
{
    const std::uint64_t first = offset / cs_, end = (offset + std::max<std::uint64_t>(length, 1) + cs_ - 1) / cs_;
    return std::any_of(allocating_.begin(), allocating_.end(),
                       [&](const auto& a) { return a.first < end && first < a.second; });
}

asio::awaitable<void> qcow2_node::wait_allocations(co_mutex::guard& g, std::uint64_t offset, std::uint64_t length)
{
    g = co_await meta_.lock();
    while (overlaps_allocation(offset, length)) {
        auto t = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor,
                                                      asio::steady_timer::time_point::max());
        alloc_waiters_.push_back(t);
        g.release();
        co_await t->async_wait(bjd::nothrow_awaitable);
        g = co_await meta_.lock();
    }
}

asio::awaitable<result<void>> qcow2_node::do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua)
{
    co_mutex::guard g;
    co_await wait_allocations(g, offset, buf.size());
    if (offset + buf.size() > h_.size)
        co_return errno_error(EINVAL);   // the image shrank while the request waited
    write_plan plan;
    auto r = co_await plan_write_locked(offset, buf, plan);
    if (!r) {
        (void)co_await commit_locked(plan, false);
        co_return r;
    }
    // Clusters the plan writes in place stay ours until the writes are done, even if a
    // discard frees them meanwhile; new ones are ours anyway.
    io_pin pin(this);
    const bool allocates = !plan.allocs.empty();
    for (const auto& a : plan.allocs)
        allocating_.emplace_back(a.first_guest / cs_, a.first_guest / cs_ + a.n);
    g.release();

    r = co_await execute(plan);

    if (allocates) {
        g = co_await meta_.lock();
        auto c = co_await commit_locked(plan, bool(r));
        if (r && !c)
            r = c;
        for (const auto& a : plan.allocs)
            std::erase(allocating_, std::pair{a.first_guest / cs_, a.first_guest / cs_ + a.n});
        for (auto& t : std::exchange(alloc_waiters_, {}))
            t->cancel();
        if (r)
            r = co_await bound_dirty_locked();
        g.release();
    }
    if (r && fua)
        r = co_await do_flush();   // the new mapping too, not just the data
    co_return r;
}

asio::awaitable<result<void>> qcow2_node::write_locked(std::uint64_t offset, std::span<const std::byte> buf)
{
    write_plan plan;
    auto r = co_await plan_write_locked(offset, buf, plan);
    if (r)
        r = co_await execute(plan);
    auto c = co_await commit_locked(plan, bool(r));
    co_return r ? c : r;
}

asio::awaitable<result<void>> qcow2_node::plan_write_locked(std::uint64_t offset, std::span<const std::byte> buf,
                                                            write_plan& plan)
{
    std::uint64_t pos = offset;
    const std::uint64_t end = offset + buf.size();
    while (pos < end) {
        auto rn = co_await lookup_locked(pos, end - pos);
        if (!rn)
            co_return rn.error();
        if (in_place(rn->m)) {
            plan.places.push_back({rn->m.host, buf.subspan(pos - offset, rn->bytes)});
            pos += rn->bytes;
            continue;
        }
        const std::uint64_t first = pos / cs_ * cs_;
        const std::uint64_t max_n = std::max<std::uint64_t>(1, max_alloc_bytes / cs_);
        std::uint64_t n = std::min(max_n, (pos + rn->bytes - first + cs_ - 1) / cs_);

        const std::uint64_t cidx = first / cs_;
        auto tab = co_await get_l2(cidx / l2_entries_, true);
        if (!tab)
            co_return tab.error();
        const std::uint64_t l2i = cidx % l2_entries_;
        std::vector<mapping> olds(n);
        for (std::uint64_t j = 0; j < n; ++j) {
            auto m = decode((**tab)[l2i + j], first + j * cs_);
            if (!m)
                co_return m.error();
            olds[j] = *m;
        }
        std::uint64_t got = 0;
        auto host = co_await alloc_clusters(n, &got);
        if (!host)
            co_return host.error();
        n = got;   // fragmented free space: this run covers the first `got` clusters only
        olds.resize(n);
        const std::uint64_t seg_end = std::min(pos + rn->bytes, first + n * cs_);
        plan.allocs.push_back({first, n, *host, pos, buf.subspan(pos - offset, seg_end - pos), std::move(olds)});
        pos = seg_end;
    }
    co_return result<void>{};
}

asio::awaitable<result<void>> qcow2_node::execute(const write_plan& plan)
{
    for (const auto& p : plan.places)
        if (auto r = co_await file()->write(p.host, p.data); !r)
            co_return r;
    for (const auto& a : plan.allocs) {
        const std::uint64_t span_bytes = a.n * cs_;
        if (a.data_off == a.first_guest && a.data.size() == span_bytes) {
            if (auto r = co_await file()->write(a.host, a.data); !r)
                co_return r;
            continue;
        }
        // Copy-on-write: the untouched parts of the first and last cluster keep what they
        // read as before (backing data, zeroes, compressed or shared data). The old clusters
        // are only freed once the new entries are linked and durable.
        std::vector<std::byte> bounce(span_bytes);
        const std::uint64_t rel_start = a.data_off - a.first_guest;
        const std::uint64_t rel_end = rel_start + a.data.size();
        if (rel_start % cs_ != 0)
            if (auto r = co_await read_mapped(a.olds[0], a.first_guest, std::span(bounce.data(), cs_)); !r)
                co_return r;
        const std::uint64_t last = a.n - 1;
        if (rel_end < span_bytes && !(last == 0 && rel_start % cs_ != 0))
            if (auto r = co_await read_mapped(a.olds[last], a.first_guest + last * cs_,
                                              std::span(bounce.data() + last * cs_, cs_));
                !r)
                co_return r;
        std::memcpy(bounce.data() + rel_start, a.data.data(), a.data.size());
        if (auto r = co_await file()->write(a.host, bounce); !r)
            co_return r;
    }
    co_return result<void>{};
}

asio::awaitable<result<void>> qcow2_node::commit_locked(const write_plan& plan, bool ok)
{
    result<void> out;
    for (const auto& a : plan.allocs) {
        if (!ok) {
            // Never referenced: the clusters can go back at once.
            if (auto r = co_await update_refcounts(a.host, a.n * cs_, -1); !r && out)
                out = r;
            continue;
        }
        const std::uint64_t cidx = a.first_guest / cs_;
        const std::uint64_t l1i = cidx / l2_entries_;
        auto tab = co_await get_l2(l1i, false);   // made by the plan; dirty or on disk since
        if (!tab || !*tab) {
            out = tab ? result<void>(errno_error(EIO)) : result<void>(tab.error());
            continue;
        }
        l2_table& t = **tab;
        for (std::uint64_t j = 0; j < a.n; ++j)
            t[cidx % l2_entries_ + j] = (a.host + j * cs_) | oflag_copied;
        mark_dirty(l2_offset(l1i), *tab);
        // The clusters the entries used to reference are freed once the new entries are
        // durable (flush_metadata_locked).
        for (const mapping& m : a.olds)
            if (auto range = referenced_bytes(m, cs_); range.second != 0)
                pending_free_.push_back(range);
    }
    co_return out;
}

asio::awaitable<result<void>> qcow2_node::clear_clusters_locked(std::uint64_t offset, std::uint64_t length,
                                                                clear_mode mode)
{
    const std::uint64_t end = offset + length;
    for (std::uint64_t pos = offset; pos < end;) {
        const std::uint64_t cidx = pos / cs_;
        const std::uint64_t l1i = cidx / l2_entries_;
        const std::uint64_t l2i = cidx % l2_entries_;
        const std::uint64_t n = std::min((end - pos) / cs_, l2_entries_ - l2i);
        // An unallocated table already reads as zeroes unless a backing file shows through.
        const bool need_table = mode != clear_mode::deallocate && backing() != nullptr;
        auto tab = co_await get_l2(l1i, need_table && l2_offset(l1i) == 0);
        if (!tab)
            co_return tab.error();
        if (!*tab) {
            pos += n * cs_;
            continue;
        }
        // The new entries are worked out on the table as it is; it is only changed once we
        // know something changes, through get_l2(.., true), which first copies a table shared
        // with an internal snapshot (the snapshot's view must not change).
        const l2_table& t = **tab;
        std::vector<std::pair<std::uint64_t, std::uint64_t>> changes;   // index, new entry
        std::vector<mapping> freed;
        for (std::uint64_t j = 0; j < n; ++j) {
            const std::uint64_t old = t[l2i + j];
            auto m = decode(old, pos + j * cs_);
            if (!m)
                co_return m.error();
            std::uint64_t ne = old;
            bool drop = false;
            const bool holds = referenced_bytes(*m, cs_).second != 0;   // a cluster to free if dropped
            switch (mode) {
            case clear_mode::zero_keep:
                // Only a cluster the image owns alone keeps its allocation: a shared one (no
                // OFLAG_COPIED) must not be claimed with the flag; this image's reference to it
                // goes instead, as in QEMU's zero_in_l2_slice.
                if (in_place(*m) || (m->k == kind::zero_alloc && m->copied)) {
                    ne = m->host | oflag_copied | oflag_zero;
                } else if (m->k != kind::unallocated || backing()) {
                    ne = oflag_zero;
                    drop = holds;
                }
                break;
            case clear_mode::zero_unmap:
                if (m->k != kind::unallocated || backing()) {
                    ne = oflag_zero;
                    drop = holds;
                }
                break;
            case clear_mode::discard:
                // Like QEMU: a discarded allocated cluster becomes a zero cluster (it reads as
                // zeroes, and stays "present" for block status); other clusters only change
                // when a backing file would show through. A cluster shared with a snapshot
                // loses this image's reference only.
                if (holds) {
                    ne = oflag_zero;
                    drop = true;
                } else {
                    ne = backing() ? oflag_zero : 0;
                }
                break;
            case clear_mode::deallocate:
                ne = 0;
                drop = holds;
                break;
            }
            if (ne == old)
                continue;
            changes.emplace_back(l2i + j, ne);
            if (drop)
                freed.push_back(*m);
        }
        if (!changes.empty()) {
            if (!(l1_[l1i] & oflag_copied)) {
                tab = co_await get_l2(l1i, true);
                if (!tab)
                    co_return tab.error();
            }
            l2_table& w = **tab;
            for (auto [i, ne] : changes)
                w[i] = ne;
            mark_dirty(l2_offset(l1i), *tab);
        }
        // Freed once the entries that dropped the clusters are durable (flush_metadata_locked).
        for (const mapping& m : freed)
            pending_free_.push_back(referenced_bytes(m, cs_));
        pos += n * cs_;
    }
    co_return result<void>{};
}

asio::awaitable<result<bool>> qcow2_node::reads_as_zero_locked(std::uint64_t offset)
{
    auto rn = co_await lookup_locked(offset, 1);
    if (!rn)
        co_return result<bool>(boost::system::in_place_error, rn.error());
    if (rn->m.k == kind::zero_plain || rn->m.k == kind::zero_alloc)
        co_return true;
    if (rn->m.k != kind::unallocated)
        co_return false;
    node* b = backing();
    co_return !b || offset / cs_ * cs_ >= b->size();
}

asio::awaitable<result<void>> qcow2_node::do_write_zeroes(std::uint64_t offset, std::uint64_t length, zero_flags f)
{
    // v2 has no zero flag: only an image without backing can drop clusters to get zeroes.
    if (h_.version < 3 && (backing() || !f.may_unmap))
        co_return errno_error(ENOTSUP);
    const std::uint64_t end = offset + length;
    const std::uint64_t a_start = (offset + cs_ - 1) / cs_ * cs_;
    // The last cluster of an image whose size is not cluster aligned counts as whole.
    std::uint64_t a_end = end == size() ? (end + cs_ - 1) / cs_ * cs_ : end / cs_ * cs_;
    if (a_end < a_start)
        a_end = a_start;

    co_mutex::guard g;
    co_await wait_allocations(g, offset, length);
    if (end > h_.size)
        co_return errno_error(EINVAL);   // the image shrank while the request waited
    struct part {
        std::uint64_t off, len;
    };
    std::vector<part> partial;
    if (a_start >= a_end) {
        partial.push_back({offset, length});
    } else {
        if (offset < a_start)
            partial.push_back({offset, a_start - offset});
        if (a_end < end)
            partial.push_back({a_end, end - a_end});
    }
    std::vector<part> to_write;
    for (const part& p : partial) {
        // A range inside one cluster (or two, when it straddles) is zero already or written.
        for (std::uint64_t o = p.off; o < p.off + p.len;) {
            std::uint64_t n = std::min(p.off + p.len, (o / cs_ + 1) * cs_) - o;
            auto z = co_await reads_as_zero_locked(o);
            if (!z)
                co_return z.error();
            if (!*z) {
                if (f.no_fallback)
                    co_return errno_error(ENOTSUP);
                to_write.push_back({o, n});
            }
            o += n;
        }
    }
    for (const part& p : to_write) {
        std::vector<std::byte> zero(p.len);
        if (auto r = co_await write_locked(p.off, zero); !r)
            co_return r;
    }
    if (a_start < a_end) {
        clear_mode mode = h_.version < 3 ? clear_mode::deallocate
                                         : (f.may_unmap ? clear_mode::zero_unmap : clear_mode::zero_keep);
        if (auto r = co_await clear_clusters_locked(a_start, a_end - a_start, mode); !r)
            co_return r;
    }
    co_return co_await bound_dirty_locked();
}

asio::awaitable<result<void>> qcow2_node::do_discard(std::uint64_t offset, std::uint64_t length)
{
    // Whole clusters only; partial ones keep their data (discard is advisory).
    const std::uint64_t end = offset + length;
    const std::uint64_t a_start = (offset + cs_ - 1) / cs_ * cs_;
    const std::uint64_t a_end = end == size() ? (end + cs_ - 1) / cs_ * cs_ : end / cs_ * cs_;
    if (a_start >= a_end)
        co_return result<void>{};
    co_mutex::guard g;
    co_await wait_allocations(g, a_start, a_end - a_start);
    if (end > h_.size)
        co_return errno_error(EINVAL);   // the image shrank while the request waited
    // v3 keeps a discarded cluster reading as zeroes with the zero flag (no backing data
    // shows through); v2 has no zero flag and drops the cluster.
    clear_mode mode = h_.version >= 3 ? clear_mode::discard : clear_mode::deallocate;
    if (auto r = co_await clear_clusters_locked(a_start, a_end - a_start, mode); !r)
        co_return r;
    co_return co_await bound_dirty_locked();
}

} // namespace bjd::block::qcow2
