// SPDX-License-Identifier: MIT
// qcow2 metadata: the L2 table cache, refcount blocks and table, and cluster allocation.
#include "node.hpp"

#include "bjd/log.hpp"

#include <algorithm>

namespace bjd::block::qcow2 {

// ---- L2 tables -----------------------------------------------------------------------------------

asio::awaitable<result<std::shared_ptr<l2_table>>> qcow2_node::get_l2(std::uint64_t l1i, bool create)
{
    const std::uint64_t e = l1_[l1i];
    std::uint64_t off = 0;
    if (std::string why; !decode_l1_entry(h_, e, file()->size(), off, why))
        co_return corrupt(why + " (L1 entry " + std::to_string(l1i) + ")");
    if (off == 0) {
        if (!create)
            co_return std::shared_ptr<l2_table>{};
        // A new table lives in memory until the next metadata flush writes it, and only then
        // the L1 entry that makes it reachable.
        auto host = co_await alloc_clusters(1);
        if (!host)
            co_return host.error();
        l1_[l1i] = *host | oflag_copied;
        dirty_l1_.insert(l1i);
        auto t = std::make_shared<l2_table>(l2_entries_, 0);
        l2_cache_.insert(*host, t);
        mark_dirty(*host, t);
        co_return t;
    }
    if (create && !(e & oflag_copied)) {
        // Without OFLAG_COPIED the table may be shared with an internal snapshot.
        auto rc = co_await get_refcount(off / cs_);
        if (!rc)
            co_return rc.error();
        if (*rc == 1) {
            // Ours alone after all (the flag was just not set): fix the flag, as
            // qemu-img check -r would.
            l1_[l1i] = off | oflag_copied;
            dirty_l1_.insert(l1i);
        } else {
            co_return co_await copy_l2_locked(l1i);
        }
    }
    co_return co_await load_l2(off);
}

asio::awaitable<result<std::shared_ptr<l2_table>>> qcow2_node::copy_l2_locked(std::uint64_t l1i)
{
    // Copy-on-write of a table shared with an internal snapshot (QEMU's l2_allocate when the
    // L1 entry lacks OFLAG_COPIED): the active image gets its own copy, the snapshot keeps the
    // original unchanged. The copied entries keep their flags: the data clusters they name
    // are still shared (their refcounts count the snapshot's reference), so nothing is
    // written in place through them either. The copy is written at the next metadata flush
    // before the L1 entry that points at it; the active image's reference to the old table
    // is dropped only once that entry is durable (pending_free_), so a crash in between
    // leaks the copy at worst.
    const std::uint64_t old_off = l2_offset(l1i);
    auto old = co_await load_l2(old_off);
    if (!old)
        co_return old.error();
    auto host = co_await alloc_clusters(1);
    if (!host)
        co_return host.error();
    auto t = std::make_shared<l2_table>(**old);
    l1_[l1i] = *host | oflag_copied;
    dirty_l1_.insert(l1i);
    l2_cache_.insert(*host, t);
    mark_dirty(*host, t);
    pending_free_.emplace_back(old_off, cs_);
    log::get("qcow2")->debug("qcow2 node '{}': L2 table {} shared with a snapshot copied to {}", name(), old_off,
                             *host);
    co_return t;
}

asio::awaitable<result<std::shared_ptr<l2_table>>> qcow2_node::load_l2(std::uint64_t off)
{
    if (auto t = l2_cache_.find(off))
        co_return t;
    if (auto it = dirty_l2_.find(off); it != dirty_l2_.end()) {
        l2_cache_.insert(off, it->second);   // evicted but not written yet: memory is the truth
        co_return it->second;
    }
    std::vector<std::byte> raw(cs_);
    if (auto r = co_await file()->read(off, raw); !r)
        co_return r.error();
    auto t = std::make_shared<l2_table>(l2_entries_);
    for (std::uint64_t i = 0; i < l2_entries_; ++i)
        (*t)[i] = load_be64(raw.data() + i * 8);
    l2_cache_.insert(off, t);
    co_return t;
}

asio::awaitable<result<void>> qcow2_node::write_refblocks()
{
    for (auto it = dirty_rb_.begin(); it != dirty_rb_.end();) {
        if (auto r = co_await file()->write(it->first, *it->second); !r)
            co_return r;
        it = dirty_rb_.erase(it);
    }
    co_return result<void>{};
}

asio::awaitable<result<void>> qcow2_node::flush_metadata_locked()
{
    // 1. Refcount blocks, so every increment is durable before a reference to its cluster.
    //    The flush also makes the data written so far durable.
    if (auto r = co_await write_refblocks(); !r)
        co_return r;
    if (!dirty_l2_.empty() || !dirty_l1_.empty() || !pending_free_.empty())
        if (auto r = co_await file()->flush(); !r)
            co_return r;
    // 2. L2 tables, then (after a flush) the L1 entries of new ones.
    std::vector<std::byte> raw(cs_);
    for (auto it = dirty_l2_.begin(); it != dirty_l2_.end();) {
        const l2_table& t = *it->second;
        for (std::uint64_t i = 0; i < l2_entries_; ++i)
            store_be64(raw.data() + i * 8, t[i]);
        if (auto r = co_await file()->write(it->first, raw); !r)
            co_return r;
        it = dirty_l2_.erase(it);
    }
    if (!dirty_l1_.empty()) {
        if (auto r = co_await file()->flush(); !r)
            co_return r;
        // Whole sectors, like QEMU; the table's cluster is zero past its end.
        const std::uint64_t lo = *dirty_l1_.begin() * 8 / 512 * 512;
        const std::uint64_t hi = std::min((*dirty_l1_.rbegin() * 8 + 8 + 511) / 512 * 512,
                                          (l1_.size() * 8 + 511) / 512 * 512);
        std::vector<std::byte> l1raw(hi - lo);
        for (std::uint64_t b = lo; b < hi && b / 8 < l1_.size(); b += 8)
            store_be64(l1raw.data() + (b - lo), l1_[b / 8]);
        if (auto r = co_await file()->write(h_.l1_table_offset + lo, l1raw); !r)
            co_return r;
        dirty_l1_.clear();
    }
    if (auto r = co_await file()->flush(); !r)
        co_return r;
    // 3. The references dropped so far are gone on disk: now their clusters may be freed.
    if (!pending_free_.empty()) {
        auto frees = std::move(pending_free_);
        pending_free_.clear();
        for (std::size_t i = 0; i < frees.size(); ++i) {
            if (auto r = co_await update_refcounts(frees[i].first, frees[i].second, -1); !r) {
                pending_free_.insert(pending_free_.end(), frees.begin() + std::ptrdiff_t(i) + 1, frees.end());
                co_return r;
            }
        }
        if (auto r = co_await write_refblocks(); !r)
            co_return r;
        if (auto r = co_await file()->flush(); !r)
            co_return r;
    }
    co_return result<void>{};
}

asio::awaitable<result<void>> qcow2_node::bound_dirty_locked()
{
    if (dirty_l2_.size() > l2_cache_.capacity() || dirty_rb_.size() > rb_cache_.capacity())
        co_return co_await flush_metadata_locked();
    co_return result<void>{};
}

// ---- refcounts -----------------------------------------------------------------------------------

asio::awaitable<result<std::shared_ptr<refblock>>> qcow2_node::get_refblock(std::uint64_t ti, bool create)
{
    if (ti >= reftable_.size()) {
        if (!create)
            co_return std::shared_ptr<refblock>{};
        if (auto r = co_await grow_reftable(ti + 1); !r)
            co_return r.error();
    }
    const std::uint64_t e = reftable_[ti];
    if (e & reftable_reserved)
        co_return corrupt("reserved bits set in refcount table entry " + std::to_string(ti));
    const std::uint64_t off = e & ~reftable_reserved;
    if (off == 0) {
        if (!create)
            co_return std::shared_ptr<refblock>{};
        auto c = co_await reserve(1);
        if (!c)
            co_return c.error();
        auto blk = std::make_shared<refblock>(cs_);
        if (*c / rb_entries_ == ti) {
            refcount_set(*blk, h_.refcount_order, *c % rb_entries_, 1);
        } else if (auto r = co_await update_refcounts(*c * cs_, cs_, +1); !r) {
            co_return r.error();
        }
        // The block and its own refcount must be on disk before the table entry that points
        // at it.
        if (auto r = co_await file()->write(*c * cs_, *blk); !r)
            co_return r.error();
        if (auto r = co_await write_refblocks(); !r)
            co_return r.error();
        if (auto r = co_await file()->flush(); !r)
            co_return r.error();
        std::byte be[8];
        store_be64(be, *c * cs_);
        if (auto r = co_await file()->write(reftable_offset_ + ti * 8, std::span<const std::byte>(be, 8)); !r)
            co_return r.error();
        reftable_[ti] = *c * cs_;
        rb_cache_.insert(*c * cs_, blk);
        co_return blk;
    }
    if ((off & (cs_ - 1)) != 0 || off > file()->size() - std::min<std::uint64_t>(cs_, file()->size()) ||
        overlaps_fixed_metadata(h_, off, cs_))
        co_return corrupt("refcount block offset " + std::to_string(off) + " is invalid");
    if (auto b = rb_cache_.find(off))
        co_return b;
    if (auto it = dirty_rb_.find(off); it != dirty_rb_.end()) {
        rb_cache_.insert(off, it->second);
        co_return it->second;
    }
    auto blk = std::make_shared<refblock>(cs_);
    if (auto r = co_await file()->read(off, *blk); !r)
        co_return r.error();
    rb_cache_.insert(off, blk);
    co_return blk;
}

asio::awaitable<result<std::uint64_t>> qcow2_node::get_refcount(std::uint64_t cluster)
{
    auto blk = co_await get_refblock(cluster / rb_entries_, false);
    if (!blk)
        co_return blk.error();
    if (!*blk)
        co_return std::uint64_t{0};
    co_return refcount_get(**blk, h_.refcount_order, cluster % rb_entries_);
}

asio::awaitable<result<void>> qcow2_node::update_refcounts(std::uint64_t off, std::uint64_t len, std::int64_t delta)
{
    if (len == 0)
        co_return result<void>{};
    const unsigned order = h_.refcount_order;
    const std::uint64_t max_rc = refcount_max(order);
    const std::uint64_t last = (off + len - 1) / cs_;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> freed;
    for (std::uint64_t c = off / cs_; c <= last;) {
        const std::uint64_t ti = c / rb_entries_;
        auto blk = co_await get_refblock(ti, delta > 0);
        if (!blk)
            co_return blk.error();
        if (!*blk)
            co_return corrupt("freeing cluster " + std::to_string(c) + " that has no refcount block");
        // Locate the block again: creating it may have moved the table, never the block.
        const std::uint64_t blk_off = reftable_[ti] & ~reftable_reserved;
        const std::uint64_t end = std::min(last, (ti + 1) * rb_entries_ - 1);
        refblock& b = **blk;
        for (std::uint64_t k = c; k <= end; ++k) {
            std::uint64_t v = refcount_get(b, order, k % rb_entries_);
            if (delta > 0 && v > max_rc - std::uint64_t(delta))
                co_return corrupt("refcount overflow for cluster " + std::to_string(k));
            if (delta < 0 && v < std::uint64_t(-delta))
                co_return corrupt("refcount underflow for cluster " + std::to_string(k));
            std::uint64_t nv = v + std::uint64_t(delta);
            refcount_set(b, order, k % rb_entries_, nv);
            if (nv == 0) {
                if (!freed.empty() && freed.back().first + freed.back().second == k * cs_)
                    freed.back().second += cs_;
                else
                    freed.emplace_back(k * cs_, cs_);
            }
        }
        dirty_rb_[blk_off] = *blk;
        c = end + 1;
    }
    if (!freed.empty()) {
        ++free_gen_;
        for (auto [o, l] : freed)
            held_[o / cs_] = held{(o + l) / cs_, free_gen_};
    }
    for (auto [o, l] : freed)
        co_await release_host(o, l);
    co_return result<void>{};
}

asio::awaitable<result<std::uint64_t>> qcow2_node::reserve(std::uint64_t n, std::uint64_t* got)
{
    // First fit from the hint, skipping held-back ranges; past the last refcount block every
    // cluster reads as free, so this ends. The refcount block at hand is kept across clusters.
    const std::uint64_t limit = 1ull << (56 - h_.cluster_bits);
    std::uint64_t start = free_hint_;
    std::uint64_t c = start;
    std::uint64_t blk_ti = ~0ull;
    std::shared_ptr<refblock> blk;
    while (c - start < n) {
        if (c + (n - (c - start)) > limit)
            co_return errno_error(EFBIG);
        if (auto it = held_.upper_bound(c); it != held_.begin() && c < std::prev(it)->second.end) {
            if (got && c > start)
                break;
            c = std::prev(it)->second.end;
            start = c;
            continue;
        }
        // Past the end of the file nothing can be in use: every allocation grows the file to
        // cover itself. A hostile refcount block claiming such clusters would otherwise make
        // this scan walk them one by one (billions of steps for a small crafted file).
        if (c * cs_ >= file()->size()) {
            ++c;
            continue;
        }
        const std::uint64_t ti = c / rb_entries_;
        if (ti != blk_ti) {
            auto b = co_await get_refblock(ti, false);
            if (!b)
                co_return b.error();
            blk = std::move(*b);
            blk_ti = ti;
        }
        const bool busy = blk && refcount_get(*blk, h_.refcount_order, c % rb_entries_) != 0;
        if (busy && got && c > start)
            break;   // a shorter run will do
        ++c;
        if (busy) {
            if (start == free_hint_)
                free_hint_ = c;   // everything below is in use
            start = c;
        }
    }
    n = c - start;
    if (got)
        *got = n;
    free_hint_ = start + n;
    const std::uint64_t end = (start + n) * cs_;
    if (end > file()->size())
        if (auto r = co_await grow_file(end); !r)
            co_return r.error();
    co_return start;
}

asio::awaitable<result<void>> qcow2_node::grow_file(std::uint64_t end)
{
    // One ftruncate per allocation is a file-system transaction each, on the loop, about a
    // thousand per GiB written into a fresh image. A large file grows ahead instead, by an
    // eighth of its size up to 64 MiB at a time; the unused tail is sparse and is cut off
    // again when the image closes or turns read-only (trim_grown_locked). Small files (a
    // step under 1 MiB) grow exactly, as QEMU's do: their size shows in query-named-block-nodes.
    const std::uint64_t fsize = file()->size();
    const std::uint64_t ahead = std::min(fsize / 8, std::uint64_t(64) << 20) / cs_ * cs_;
    const std::uint64_t want = ahead >= (1u << 20) ? std::max(end, (fsize + ahead + cs_ - 1) / cs_ * cs_) : end;
    if (want > end) {
        if (auto r = co_await file()->truncate(want); r) {
            grown_ahead_ = true;
            co_return r;
        }
        // A block device cannot grow: it only has to hold `end`.
    }
    co_return co_await file()->truncate(end);
}

asio::awaitable<void> qcow2_node::trim_grown_locked()
{
    if (!grown_ahead_)
        co_return;
    grown_ahead_ = false;
    // Refcounts first: nothing on disk may count a cluster past the new end.
    if (auto r = co_await flush_metadata_locked(); !r)
        co_return;
    co_await trim_file_locked();
}

void qcow2_node::reclaim()
{
    const std::uint64_t oldest = inflight_.empty() ? ~0ull : inflight_.begin()->first;
    for (auto it = held_.begin(); it != held_.end();) {
        if (it->second.gen <= oldest) {
            free_hint_ = std::min(free_hint_, it->first);
            it = held_.erase(it);
        } else {
            ++it;
        }
    }
}

asio::awaitable<result<std::uint64_t>> qcow2_node::alloc_clusters(std::uint64_t n, std::uint64_t* got)
{
    // Only here, outside any reservation in progress, may the hint move down: a nested
    // reserve (a refcount block or table for this allocation) must never see the clusters
    // reserved above, whose refcounts are not set yet.
    reclaim();
    auto start = co_await reserve(n, got);
    if (!start)
        co_return start.error();
    if (got)
        n = *got;
    // In memory; flush_metadata_locked() writes them before anything that references them.
    if (auto r = co_await update_refcounts(*start * cs_, n * cs_, +1); !r)
        co_return r.error();
    co_return *start * cs_;
}

asio::awaitable<result<void>> qcow2_node::grow_reftable(std::uint64_t min_entries)
{
    if (growing_reftable_)
        co_return corrupt("refcount table growth recursed");
    const std::uint64_t per_cluster = cs_ / 8;
    std::uint64_t entries = std::max<std::uint64_t>(min_entries, reftable_.size() * 2);
    entries = (entries + per_cluster - 1) / per_cluster * per_cluster;
    if (entries * 8 > max_reftable_bytes)
        co_return errno_error(EFBIG);
    const std::uint64_t k = entries / per_cluster;
    const std::uint64_t old_off = reftable_offset_;
    const std::uint64_t old_len = reftable_.size() * 8;

    growing_reftable_ = true;
    auto t = co_await reserve(k);
    if (!t) {
        growing_reftable_ = false;
        co_return t.error();
    }
    // From here on the in-memory table is the new one; blocks created while counting its own
    // clusters write their entries into it at its new place.
    reftable_.resize(entries, 0);
    reftable_offset_ = *t * cs_;
    auto r = co_await update_refcounts(*t * cs_, k * cs_, +1);
    growing_reftable_ = false;
    if (!r)
        co_return r;
    std::vector<std::byte> raw(entries * 8);
    for (std::uint64_t i = 0; i < entries; ++i)
        store_be64(raw.data() + i * 8, reftable_[i]);
    // The new table's own refcounts go to disk with it, before the header points at it.
    if (r = co_await write_refblocks(); !r)
        co_return r;
    if (r = co_await file()->write(reftable_offset_, raw); !r)
        co_return r;
    if (r = co_await file()->flush(); !r)
        co_return r;
    std::byte hdr[12];
    store_be64(hdr, reftable_offset_);
    store_be32(hdr + 8, static_cast<std::uint32_t>(k));
    if (r = co_await file()->write(off_refcount_table_offset, std::span<const std::byte>(hdr, 12)); !r)
        co_return r;
    if (r = co_await file()->flush(); !r)
        co_return r;
    h_.refcount_table_offset = reftable_offset_;
    h_.refcount_table_clusters = static_cast<std::uint32_t>(k);
    log::get("qcow2")->debug("qcow2 node '{}': refcount table grown to {} entries at {}", name(), entries,
                             reftable_offset_);
    co_return co_await update_refcounts(old_off, old_len, -1);
}

asio::awaitable<void> qcow2_node::release_host(std::uint64_t off, std::uint64_t len)
{
    // Advisory: the file node ignores it unless discard=unmap was inherited.
    if (off + len <= file()->size())
        (void)co_await file()->discard(off, len);
}

// ---- dirty images (lazy refcounts) -------------------------------------------------------------

asio::awaitable<result<void>> qcow2_node::repair_dirty(std::string& error)
{
    if (h_.nb_snapshots != 0) {
        error = "it has internal snapshots; run 'qemu-img check -r all' on it";
        co_return errno_error(ENOTSUP);
    }
    // References counted per cluster of the file; nothing may point past its end (a zero
    // cluster with a preallocated offset there included), which also bounds the table.
    const std::uint64_t nclusters = (file()->size() + cs_ - 1) / cs_;
    std::vector<std::uint32_t> refs(nclusters, 0);
    auto add = [&](std::uint64_t off, std::uint64_t len, const char* what) -> bool {
        if (len == 0)
            return true;
        for (std::uint64_t c = off / cs_; c <= (off + len - 1) / cs_; ++c) {
            if (c >= nclusters || refs[c] == UINT32_MAX) {
                error = std::string(what) + " at offset " + std::to_string(off) + " lies past the end of the file";
                return false;
            }
            ++refs[c];
        }
        return true;
    };
    if (!add(0, cs_, "the header") || !add(h_.l1_table_offset, std::uint64_t(h_.l1_size) * 8, "the L1 table") ||
        !add(reftable_offset_, reftable_.size() * 8, "the refcount table"))
        co_return errno_error(EINVAL);
    for (std::uint64_t ti = 0; ti < reftable_.size(); ++ti) {
        if (reftable_[ti] & reftable_reserved)
            co_return corrupt("reserved bits set in refcount table entry " + std::to_string(ti));
        if (const std::uint64_t off = reftable_[ti]; off != 0 && !add(off, cs_, "a refcount block"))
            co_return errno_error(EINVAL);
    }
    for (std::uint64_t l1i = 0; l1i < l1_.size(); ++l1i) {
        auto t = co_await get_l2(l1i, false);   // validates the L1 entry and the table offset
        if (!t)
            co_return t.error();
        if (!*t)
            continue;
        if (!add(l2_offset(l1i), cs_, "an L2 table"))
            co_return errno_error(EINVAL);
        for (std::uint64_t j = 0; j < l2_entries_; ++j) {
            auto m = decode((**t)[j], (l1i * l2_entries_ + j) * cs_);
            if (!m)
                co_return m.error();
            auto [off, len] = referenced_bytes(*m, cs_);
            if (!add(off, len, m->k == kind::compressed ? "a compressed cluster" : "a data cluster"))
                co_return errno_error(EINVAL);
        }
    }
    // New refcount blocks go past everything counted above.
    free_hint_ = nclusters;
    std::uint64_t fixed = 0;
    for (std::uint64_t c = 0; c < nclusters; ++c) {
        if (refs[c] == 0)
            continue;
        auto rc = co_await get_refcount(c);
        if (!rc)
            co_return rc.error();
        if (*rc >= refs[c])
            continue;
        if (auto r = co_await update_refcounts(c * cs_, cs_, std::int64_t(refs[c] - *rc)); !r)
            co_return r;
        ++fixed;
    }
    // The refcounts are durable before the header stops saying they may be wrong.
    if (auto r = co_await flush_metadata_locked(); !r)
        co_return r;
    std::byte be[8];
    store_be64(be, h_.incompatible & ~incompat_dirty);
    if (auto r = co_await file()->write(off_incompatible, std::span<const std::byte>(be, 8)); !r)
        co_return r;
    if (auto r = co_await file()->flush(); !r)
        co_return r;
    h_.incompatible &= ~incompat_dirty;
    free_hint_ = 0;
    log::get("qcow2")->warn("qcow2 node '{}' ({}): image was not closed cleanly; repaired {} refcount(s)", name(),
                            filename(), fixed);
    co_return result<void>{};
}

} // namespace bjd::block::qcow2
