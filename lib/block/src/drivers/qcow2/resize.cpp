// SPDX-License-Identifier: MIT
// qcow2: block_resize, growing and shrinking an image (QEMU 7.2's qcow2_co_truncate without
// preallocation, in its order and words; docs/interop/qcow2.txt for the layout).
#include "node.hpp"

#include "bjd/log.hpp"

#include <algorithm>
#include <climits>

namespace bjd::block::qcow2 {

asio::awaitable<qapi::result<void>> qcow2_node::do_resize(std::uint64_t size)
{
    if (size % 512 != 0)
        co_return qapi::generic("The new size must be a multiple of 512");
    // As QEMU drains the node: no allocating write may link clusters while the map changes,
    // and none starts before we are done (we keep `meta_`).
    co_mutex::guard g;
    co_await wait_allocations(g, 0, std::max(h_.size, size));
    // v2 snapshots do not record their own size (QEMU refuses them the same way).
    if (h_.nb_snapshots != 0 && h_.version < 3)
        co_return qapi::generic("Can't resize a v2 image which has snapshots");

    const std::uint64_t old = h_.size;
    const std::uint64_t table_bytes = cs_ * l2_entries_;
    const std::uint64_t l1_entries = (size + table_bytes - 1) / table_bytes;
    if (size < old) {
        if (auto r = co_await discard_tail_locked((size + cs_ - 1) / cs_ * cs_); !r)
            co_return qapi::generic("Failed to discard cropped clusters: " + strerror_text(r.error()));
        if (auto r = co_await shrink_l1_locked(l1_entries); !r)
            co_return qapi::generic("Failed to reduce the number of L2 tables: " + strerror_text(r.error()));
        co_await trim_file_locked();
    } else if (auto r = co_await grow_l1_locked(l1_entries); !r) {
        co_return qapi::generic("Failed to grow the L1 table: " + strerror_text(r.error()));
    }

    // A backing file that reaches past the old end would show through the new area: QEMU's
    // block layer then asks for zeroes there, which qcow2 gives as zero clusters from the
    // first cluster boundary on and as written zeroes in the rest of the old last cluster.
    node* b = backing();
    if (size > old && b && b->size() > old) {
        const std::uint64_t zero_start = (old + cs_ - 1) / cs_ * cs_;
        if (size > zero_start) {
            // Version 2 has no zero flag.
            if (h_.version < 3)
                co_return qapi::generic("Failed to zero out new clusters: " +
                                        strerror_text(errno_error(ENOTSUP)));
            const std::uint64_t len = (size - zero_start + cs_ - 1) / cs_ * cs_;
            if (auto r = co_await clear_clusters_locked(zero_start, len, clear_mode::zero_keep); !r)
                co_return qapi::generic("Failed to zero out new clusters: " + strerror_text(r.error()));
        }
        if (zero_start > old) {
            std::vector<std::byte> zero(std::min(zero_start, size) - old);
            if (auto r = co_await write_locked(old, zero); !r)
                co_return qapi::generic("Failed to zero out the new area: " + strerror_text(r.error()));
        }
    }

    // Whatever the new size relies on (tables, zero clusters, refcounts) is durable before the
    // header announces it, so a crash leaves either the old image or the new one.
    auto r = co_await flush_metadata_locked();
    if (r) {
        std::byte be[8];
        store_be64(be, size);
        r = co_await file()->write(off_size, std::span<const std::byte>(be, 8));
    }
    if (r)
        r = co_await file()->flush();
    if (!r)
        co_return qapi::generic("Failed to update the image size: " + strerror_text(r.error()));
    h_.size = size;
    // As QEMU's qcow2_update_options after a resize: the default cache covers the new size.
    if (l2_cache_auto_)
        size_l2_cache(0);
    log::get("qcow2")->debug("qcow2 node '{}': virtual size {} -> {}, L1 table {} entries at {}", name(), old, size,
                             l1_.size(), h_.l1_table_offset);
    co_return qapi::result<void>{};
}

asio::awaitable<result<void>> qcow2_node::grow_l1_locked(std::uint64_t entries)
{
    if (entries <= l1_.size())
        co_return result<void>{};
    if (entries > INT_MAX / 8 || entries * 8 > max_l1_bytes)
        co_return errno_error(EFBIG);
    // The new table is a copy of the one in memory: every table it points at, and every L1
    // entry still waiting to be written, must be on disk first.
    if (auto r = co_await flush_metadata_locked(); !r)
        co_return r;
    const std::uint64_t nclusters = (entries * 8 + cs_ - 1) / cs_;
    auto host = co_await alloc_clusters(nclusters);
    if (!host)
        co_return host.error();
    std::vector<std::byte> raw(nclusters * cs_);   // zeroes past the last entry
    for (std::size_t i = 0; i < l1_.size(); ++i)
        store_be64(raw.data() + i * 8, l1_[i]);
    // The table and its own refcounts are durable before the header points at it.
    auto r = co_await write_refblocks();
    if (r)
        r = co_await file()->write(*host, raw);
    if (r)
        r = co_await file()->flush();
    if (!r) {
        (void)co_await update_refcounts(*host, nclusters * cs_, -1);   // nothing refers to it
        co_return r;
    }
    std::byte hdr[12];
    store_be32(hdr, static_cast<std::uint32_t>(entries));
    store_be64(hdr + 4, *host);
    r = co_await file()->write(off_l1_size, std::span<const std::byte>(hdr, 12));
    if (r)
        r = co_await file()->flush();
    if (!r)
        co_return r;   // the header may point at either table: both stay (one leaks at worst)
    const std::uint64_t old_off = h_.l1_table_offset;
    const std::uint64_t old_bytes = l1_.size() * 8;
    h_.l1_table_offset = *host;
    h_.l1_size = static_cast<std::uint32_t>(entries);
    l1_.resize(entries, 0);
    log::get("qcow2")->debug("qcow2 node '{}': L1 table grown to {} entries at {}", name(), entries, *host);
    if (old_bytes == 0)
        co_return result<void>{};
    co_return co_await update_refcounts(old_off, old_bytes, -1);
}

asio::awaitable<result<void>> qcow2_node::discard_tail_locked(std::uint64_t from)
{
    const std::uint64_t table_bytes = cs_ * l2_entries_;
    const std::uint64_t end = (h_.size + cs_ - 1) / cs_ * cs_;
    // Whole tables past `from` go with the L1 entries (shrink_l1_locked); here only the table
    // that keeps its first entries loses the rest.
    if (from < end && from % table_bytes != 0) {
        const std::uint64_t l1i = from / table_bytes;
        if (l1i < l1_.size() && l2_offset(l1i) != 0) {
            // A table shared with an internal snapshot is copied first (clear_clusters_locked),
            // as QEMU does: the snapshot keeps its entries.
            const std::uint64_t stop = std::min(end, (l1i + 1) * table_bytes);
            if (auto r = co_await clear_clusters_locked(from, stop - from, clear_mode::deallocate); !r)
                co_return r;
        }
    }
    // The cleared entries are durable before their clusters are freed.
    co_return co_await flush_metadata_locked();
}

asio::awaitable<result<void>> qcow2_node::shrink_l1_locked(std::uint64_t entries)
{
    if (entries >= l1_.size())
        co_return result<void>{};
    // What the dropped tables reference, read before anything changes. A table shared with a
    // snapshot stays the snapshot's: only this image's references to it and through it go.
    std::vector<std::uint64_t> dropped;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> refs;
    for (std::uint64_t i = entries; i < l1_.size(); ++i) {
        auto t = co_await get_l2(i, false);
        if (!t)
            co_return t.error();
        if (!*t)
            continue;
        for (std::uint64_t j = 0; j < l2_entries_; ++j) {
            auto m = decode((**t)[j], (i * l2_entries_ + j) * cs_);
            if (!m)
                co_return m.error();
            if (auto range = referenced_bytes(*m, cs_); range.second != 0)
                refs.push_back(range);
        }
        dropped.push_back(i);
        refs.emplace_back(l2_offset(i), cs_);
    }
    if (dropped.empty())
        co_return result<void>{};
    // The entries are cleared on disk first; the table keeps its size, as QEMU's does.
    std::vector<std::byte> zero((l1_.size() - entries) * 8);
    auto r = co_await file()->write(h_.l1_table_offset + entries * 8, zero);
    if (r)
        r = co_await file()->flush();
    for (std::uint64_t i : dropped) {
        // Cleared in memory even on failure (the table on disk may be partly cleared): what
        // they referenced leaks then, which is safe.
        l2_cache_.erase(l2_offset(i));
        dirty_l2_.erase(l2_offset(i));
        dirty_l1_.erase(i);
        l1_[i] = 0;
    }
    if (!r)
        co_return r;
    for (auto [off, len] : refs)
        if (auto u = co_await update_refcounts(off, len, -1); !u)
            co_return u;
    co_return co_await flush_metadata_locked();
}

asio::awaitable<void> qcow2_node::trim_file_locked()
{
    const std::uint64_t fsize = file()->size();
    std::uint64_t c = (fsize + cs_ - 1) / cs_;
    while (c > 0) {
        auto rc = co_await get_refcount(c - 1);
        if (!rc)
            co_return;
        if (*rc != 0)
            break;
        --c;
    }
    if (c * cs_ >= fsize)
        co_return;
    if (auto r = co_await file()->truncate(c * cs_); !r)
        log::get("qcow2")->warn("qcow2 node '{}': Failed to truncate the tail of the image: {}", name(),
                                strerror_text(r.error()));
}

} // namespace bjd::block::qcow2
