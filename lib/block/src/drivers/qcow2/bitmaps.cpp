// SPDX-License-Identifier: MIT
// qcow2 persistent dirty bitmaps: the bitmaps extension, directory and bitmap tables of QEMU's
// docs/interop/qcow2.txt ("Bitmaps extension"), with QEMU 7.2's life cycle
// (block/qcow2-bitmap.c): loaded at open and marked in use while the image is writable,
// written back with the in-use flag clear when the node closes.
//
// Crash safety: new tables, data clusters and directory are written to freshly allocated
// clusters whose refcounts are durable before the header points at them; the old ones are
// freed only after the header switched. A kill at any point leaves either the old directory
// (its bitmaps marked in use, so QEMU treats them as inconsistent) or the new one, plus
// leaked clusters at most.
#include "node.hpp"

#include "bjd/block/bitmaps.hpp"
#include "bjd/log.hpp"

#include <algorithm>
#include <bit>
#include <cstring>

namespace bjd::block::qcow2 {

namespace {

/// QEMU's BME_MAX_PHYS_SIZE: at most 512 MiB of bitmap data.
constexpr std::uint64_t bme_max_phys_size = 0x20000000;

std::uint64_t round_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

} // namespace

bool qcow2_node::close_work() const noexcept
{
    return !read_only() && (grown_ahead_ || bitmaps_to_store());
}

bool qcow2_node::bitmaps_to_store() const noexcept
{
    if (read_only() || bitmaps_closed_)
        return false;
    if (!stored_.empty())
        return true;
    for (const auto& b : named_bitmaps())
        if (b->persistent())
            return true;
    return false;
}

qapi::result<void> qcow2_node::can_store_new_bitmap(const std::string& bname, std::uint64_t granularity) const
{
    // QEMU's qcow2_co_can_store_new_dirty_bitmap and check_constraints_on_bitmap.
    if (find_bitmap(bname) || std::any_of(carried_.begin(), carried_.end(), [&](const auto& e) { return e.name == bname; }))
        return qapi::generic("Bitmap already exists: " + bname);
    const std::string prefix = "Can't make bitmap '" + bname + "' persistent in '" + name() + "': ";
    if (h_.version < 3)
        return qapi::generic(prefix + "Cannot store dirty bitmaps in qcow2 v2 files");
    const unsigned gbits = static_cast<unsigned>(std::countr_zero(granularity));
    if (gbits > bme_max_granularity_bits)
        return qapi::generic(prefix + "Granularity exceeds maximum (2147483648 bytes)");
    if (gbits < bme_min_granularity_bits)
        return qapi::generic(prefix + "Granularity is under minimum (512 bytes)");
    const std::uint64_t bitmap_bytes = ((h_.size + granularity - 1) / granularity + 7) / 8;
    if (bitmap_bytes > bme_max_phys_size || bitmap_bytes > bme_max_table_size * cs_)
        return qapi::generic(prefix + "Too much space will be occupied by the bitmap. Use larger granularity");
    if (bname.size() > bme_max_name)
        return qapi::generic(prefix + "Name length exceeds maximum (1023 characters)");
    std::uint64_t nb = carried_.size();
    std::uint64_t dir = 0;
    for (const auto& e : carried_)
        dir += bitmap_dir_entry_size(e.name.size(), e.extra_data.size());
    for (const auto& b : named_bitmaps())
        if (b->persistent()) {
            ++nb;
            dir += bitmap_dir_entry_size(b->name().size(), 0);
        }
    if (nb == 0)
        return {};
    if (nb >= max_bitmaps)
        return qapi::generic(prefix + "Maximum number of persistent bitmaps is already reached");
    if (dir + bitmap_dir_entry_size(bname.size(), 0) > max_bitmap_directory_bytes)
        return qapi::generic(prefix + "Not enough space in the bitmap directory");
    return {};
}

asio::awaitable<qapi::result<void>> qcow2_node::load_bitmaps()
{
    if (!h_.has_bitmaps_ext)
        co_return qapi::result<void>{};
    std::vector<std::byte> dir(h_.bitmap_directory_size);
    if (auto r = co_await file()->read(h_.bitmap_directory_offset, dir); !r)
        co_return qapi::generic("Failed to read bitmap directory: " + strerror_text(r.error()));
    std::vector<bitmap_dir_entry> entries;
    std::string err;
    if (!decode_bitmap_directory(dir, h_.nb_bitmaps, h_, file()->size(), entries, err))
        co_return qapi::generic("Failed to read bitmap directory: " + err);

    const std::uint64_t fsize = file()->size();
    const std::uint64_t bits_per_cluster = cs_ * 8;
    bool marked = false;
    std::vector<std::byte> raw;
    std::vector<std::byte> data(cs_);
    for (auto& e : entries) {
        if (e.flags & bme_in_use) {
            // Left in use by a process that never closed the image: its contents cannot be
            // trusted. Like QEMU's qcow2_load_dirty_bitmaps, the node lists it as inconsistent
            // (empty, not recording, good only for block-dirty-bitmap-remove); the image keeps
            // its entry as it is until it is removed.
            log::get("qcow2")->warn("qcow2 node '{}' ({}): bitmap '{}' is marked in use (inconsistent); "
                                    "block-dirty-bitmap-remove deletes it",
                                    name(), filename(), e.name);
            auto b = add_bitmap(e.name, 1ull << e.granularity_bits);
            b->set_persistent(true);
            b->set_inconsistent();
            b->set_readonly(read_only());
            carried_.push_back(e);
            continue;
        }
        raw.assign(std::size_t(e.table_size) * 8, std::byte{0});
        if (auto r = co_await file()->read(e.table_offset, raw); !r)
            co_return qapi::generic("Could not read bitmap '" + e.name + "': " + strerror_text(r.error()));
        const std::uint64_t gran = 1ull << e.granularity_bits;
        auto b = add_bitmap(e.name, gran);
        b->set_persistent(true);
        b->set_enabled((e.flags & bme_auto) != 0);
        b->set_readonly(read_only());   // the image could not follow a change
        dirty_bitmap& bits = b->bits();
        for (std::uint32_t i = 0; i < e.table_size; ++i) {
            const std::uint64_t te = load_be64(raw.data() + std::size_t(i) * 8);
            const std::uint64_t first = i * bits_per_cluster;
            const std::uint64_t end = std::min(first + bits_per_cluster, bits.chunks());
            const std::uint64_t off = te & offset_mask;
            if ((te & bme_table_reserved) || (off != 0 && ((off & (cs_ - 1)) != 0 || off > fsize - std::min(cs_, fsize) ||
                                                           overlaps_fixed_metadata(h_, off, cs_))) ||
                (off != 0 && (te & bme_table_all_ones)))
                co_return qapi::generic("Bitmap '" + e.name + "' has an invalid bitmap table entry " +
                                        std::to_string(i));
            if (off == 0) {
                if (te & bme_table_all_ones)
                    bits.set(first * gran, (end - first) * gran);
                continue;
            }
            if (auto r = co_await file()->read(off, data); !r)
                co_return qapi::generic("Could not read bitmap '" + e.name + "': " + strerror_text(r.error()));
            // Bit k of byte j stands for chunk j*8+k (QEMU serialises little-endian words).
            for (std::uint64_t c = first; c < end; ++c) {
                const std::uint64_t k = c - first;
                if ((std::to_integer<unsigned>(data[k / 8]) >> (k % 8)) & 1u)
                    bits.set(c * gran, gran);
            }
        }
        if (!read_only()) {
            e.flags |= bme_in_use;
            marked = true;
        }
    }
    stored_ = std::move(entries);
    stored_dir_offset_ = h_.bitmap_directory_offset;
    stored_dir_size_ = h_.bitmap_directory_size;
    if (marked) {
        // While the image is open read-write its bitmaps are in use on disk: a crash leaves
        // them inconsistent rather than silently stale. Same size: rewritten in place.
        auto enc = encode_bitmap_directory(stored_);
        if (auto r = co_await file()->write(stored_dir_offset_, enc); !r)
            co_return qapi::generic("Could not mark bitmaps in use: " + strerror_text(r.error()));
        if (auto r = co_await file()->flush(); !r)
            co_return qapi::generic("Could not mark bitmaps in use: " + strerror_text(r.error()));
    }
    co_return qapi::result<void>{};
}

asio::awaitable<result<void>> qcow2_node::before_close()
{
    auto g = co_await meta_.lock();
    result<void> r;
    if (bitmaps_to_store())
        r = co_await store_bitmaps_locked(true);
    co_await trim_grown_locked();
    co_return r;
}

asio::awaitable<result<void>> qcow2_node::reopen_bitmaps(bool to_read_only)
{
    auto g = co_await meta_.lock();
    // QEMU's qcow2_reopen_bitmaps_ro/_rw: the bitmaps the image stores follow its access.
    const auto set_readonly = [&](bool v) {
        for (const auto& e : stored_)
            if (auto b = find_bitmap(e.name); b && b->persistent())
                b->set_readonly(v);
    };
    if (to_read_only) {
        // Still writable here: store as a close would, then let a later writable phase
        // (another reopen) mark and store them again.
        auto r = co_await store_bitmaps_locked(true);
        bitmaps_closed_ = false;
        if (r)
            set_readonly(true);
        co_await trim_grown_locked();
        co_return r;
    }
    if (read_only() || stored_.empty())
        co_return result<void>{};
    bool changed = false;
    for (auto& e : stored_)
        if (!(e.flags & bme_in_use)) {
            e.flags |= bme_in_use;
            changed = true;
        }
    if (changed) {
        auto enc = encode_bitmap_directory(stored_);   // same size: rewritten in place
        if (auto r = co_await file()->write(stored_dir_offset_, enc); !r)
            co_return r;
        if (auto r = co_await file()->flush(); !r)
            co_return r;
    }
    set_readonly(false);
    co_return result<void>{};
}

asio::awaitable<qapi::result<void>> qcow2_node::remove_persistent_bitmap(const std::string& bname)
{
    // QEMU's qcow2_co_remove_persistent_dirty_bitmap: the image stops holding it at once.
    // The node already dropped the bitmap; rewriting the directory without it does that.
    if (read_only() || bitmaps_closed_)
        co_return qapi::result<void>{};
    bool on_disk = false;
    for (const auto& e : stored_)
        on_disk = on_disk || e.name == bname;
    for (const auto& e : carried_)
        on_disk = on_disk || e.name == bname;
    if (!on_disk)
        co_return qapi::result<void>{};
    std::erase_if(carried_, [&](const bitmap_dir_entry& e) { return e.name == bname; });
    auto g = co_await meta_.lock();
    if (auto r = co_await store_bitmaps_locked(false); !r)
        co_return qapi::generic("Failed to remove bitmap '" + bname + "' from the image: " + strerror_text(r.error()));
    co_return qapi::result<void>{};
}

asio::awaitable<result<void>> qcow2_node::store_bitmaps_locked(bool closing)
{
    if (read_only() || bitmaps_closed_)
        co_return result<void>{};
    // Whatever else is dirty goes first, so the refcounts below build on durable ones.
    if (auto r = co_await flush_metadata_locked(); !r)
        co_return r;

    // QEMU's order: the bitmaps the directory holds keep their places (inconsistent ones
    // as they are), new ones follow, newest first (the node's listing order).
    std::vector<bitmap_dir_entry> entries;
    std::vector<std::shared_ptr<named_bitmap>> order;
    std::vector<std::size_t> slot;   // order[i] goes to entries[slot[i]]
    for (const auto& e : stored_) {
        auto c = std::find_if(carried_.begin(), carried_.end(), [&](const auto& x) { return x.name == e.name; });
        if (c != carried_.end()) {
            entries.push_back(*c);
        } else if (auto b = find_bitmap(e.name); b && b->persistent()) {
            order.push_back(b);
            slot.push_back(entries.size());
            entries.emplace_back();
        }
    }
    const auto& all = named_bitmaps();
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
        // An inconsistent bitmap is only ever the entry the image already has (carried).
        if (!(*it)->persistent() || (*it)->inconsistent() || std::find(order.begin(), order.end(), *it) != order.end())
            continue;
        order.push_back(*it);
        slot.push_back(entries.size());
        entries.emplace_back();
    }
    std::vector<std::pair<std::uint64_t, std::uint64_t>> fresh;   // clusters allocated here
    auto undo = [&]() -> asio::awaitable<void> {
        for (auto [o, l] : fresh)
            (void)co_await update_refcounts(o, l, -1);
        (void)co_await flush_metadata_locked();
    };
    const std::uint64_t bits_per_cluster = cs_ * 8;
    std::vector<std::byte> data(cs_);
    for (std::size_t k = 0; k < order.size(); ++k) {
        const auto& b = order[k];
        const dirty_bitmap& bits = b->bits();
        const std::uint64_t gran = bits.granularity();
        const unsigned gbits = static_cast<unsigned>(std::countr_zero(gran));
        const std::uint64_t nt = bitmap_table_entries(h_.size, gbits, cs_);
        std::vector<std::byte> table(round_up(std::max<std::uint64_t>(nt * 8, 1), cs_));
        for (std::uint64_t i = 0; i < nt; ++i) {
            const std::uint64_t first = i * bits_per_cluster;
            const std::uint64_t end = std::min(first + bits_per_cluster, bits.chunks());
            if (first >= end || !bits.next_dirty_area(first * gran, end * gran))
                continue;   // a clean cluster of bits is not stored: entry 0
            std::fill(data.begin(), data.end(), std::byte{0});
            for (std::uint64_t c = first; c < end; ++c)
                if (bits.test(c)) {
                    const std::uint64_t k = c - first;
                    data[k / 8] |= std::byte(1u << (k % 8));
                }
            auto host = co_await alloc_clusters(1);
            if (!host) {
                co_await undo();
                co_return host.error();
            }
            fresh.emplace_back(*host, cs_);
            if (auto r = co_await file()->write(*host, data); !r) {
                co_await undo();
                co_return r;
            }
            store_be64(table.data() + i * 8, *host);
        }
        auto toff = co_await alloc_clusters(table.size() / cs_);
        if (!toff) {
            co_await undo();
            co_return toff.error();
        }
        fresh.emplace_back(*toff, table.size());
        if (auto r = co_await file()->write(*toff, table); !r) {
            co_await undo();
            co_return r;
        }
        bitmap_dir_entry e;
        e.table_offset = *toff;
        e.table_size = static_cast<std::uint32_t>(nt);
        // Kept in use while the node stays open (a removal rewrote the directory): only a
        // close leaves them consistent.
        e.flags = (b->enabled() ? bme_auto : 0) | (closing ? 0 : bme_in_use);
        e.granularity_bits = static_cast<std::uint8_t>(gbits);
        e.name = b->name();
        entries[slot[k]] = std::move(e);
    }
    std::uint64_t dir_off = 0;
    std::vector<std::byte> dir = encode_bitmap_directory(entries);
    const std::uint64_t dir_size = dir.size();
    if (!entries.empty()) {
        dir.resize(round_up(dir.size(), cs_));
        auto d = co_await alloc_clusters(dir.size() / cs_);
        if (!d) {
            co_await undo();
            co_return d.error();
        }
        fresh.emplace_back(*d, dir.size());
        if (auto r = co_await file()->write(*d, dir); !r) {
            co_await undo();
            co_return r;
        }
        dir_off = *d;
    }
    // New clusters and their refcounts durable, then the header switches to them.
    if (auto r = co_await flush_metadata_locked(); !r) {
        co_await undo();
        co_return r;
    }
    if (auto r = co_await write_bitmaps_header_locked(static_cast<std::uint32_t>(entries.size()), dir_size, dir_off);
        !r) {
        co_await undo();
        co_return r;
    }
    // The old directory is unreachable now: free what it alone used.
    auto old = std::move(stored_);
    const std::uint64_t old_dir = stored_dir_offset_, old_dir_size = stored_dir_size_;
    stored_ = entries;
    stored_dir_offset_ = dir_off;
    stored_dir_size_ = dir_size;
    if (closing)
        bitmaps_closed_ = true;
    result<void> out;
    for (const auto& e : old) {
        const bool kept = std::any_of(carried_.begin(), carried_.end(),
                                      [&](const bitmap_dir_entry& c) { return c.table_offset == e.table_offset; });
        if (!kept)
            if (auto r = co_await free_bitmap_clusters_locked(e); !r && out)
                out = r;
    }
    if (old_dir != 0 && old_dir_size != 0)
        if (auto r = co_await update_refcounts(old_dir, round_up(old_dir_size, cs_), -1); !r && out)
            out = r;
    if (auto r = co_await flush_metadata_locked(); !r && out)
        out = r;
    co_return out;
}

asio::awaitable<result<void>> qcow2_node::free_bitmap_clusters_locked(const bitmap_dir_entry& e)
{
    std::vector<std::byte> raw(std::size_t(e.table_size) * 8);
    if (auto r = co_await file()->read(e.table_offset, raw); !r)
        co_return r;
    for (std::uint32_t i = 0; i < e.table_size; ++i) {
        const std::uint64_t off = load_be64(raw.data() + std::size_t(i) * 8) & offset_mask;
        if (off != 0)
            if (auto r = co_await update_refcounts(off, cs_, -1); !r)
                co_return r;
    }
    co_return co_await update_refcounts(e.table_offset, round_up(std::max<std::uint64_t>(raw.size(), 1), cs_), -1);
}

asio::awaitable<result<void>> qcow2_node::write_bitmaps_header_locked(std::uint32_t nb, std::uint64_t dir_size,
                                                                      std::uint64_t dir_offset)
{
    node* f = file();
    std::vector<std::byte> c(static_cast<std::size_t>(std::min<std::uint64_t>(cs_, f->size())));
    if (auto r = co_await f->read(0, c); !r)
        co_return r;
    // The other extensions, in their order; the bitmaps one after the feature table (where
    // QEMU's qcow2_update_header puts it) or last.
    std::vector<std::byte> area;
    auto put = [&](std::uint32_t type, std::span<const std::byte> d) {
        std::size_t at = area.size();
        area.resize(at + 8 + (d.size() + 7) / 8 * 8);
        store_be32(area.data() + at, type);
        store_be32(area.data() + at + 4, static_cast<std::uint32_t>(d.size()));
        std::memcpy(area.data() + at + 8, d.data(), d.size());
    };
    const auto ext = encode_bitmaps_ext(nb, dir_size, dir_offset);
    bool placed = nb == 0;
    std::uint64_t limit = c.size();
    if (h_.backing_file_offset != 0 && h_.backing_file_offset < limit)
        limit = h_.backing_file_offset;
    for (std::uint64_t off = h_.header_length; off + 8 <= limit;) {
        const std::uint32_t type = load_be32(c.data() + off);
        const std::uint32_t len = load_be32(c.data() + off + 4);
        off += 8;
        if (type == ext_end || len > limit - off)
            break;
        if (type != ext_bitmaps)
            put(type, std::span<const std::byte>(c.data() + off, len));
        if (type == ext_feature_table && !placed) {
            put(ext_bitmaps, ext);
            placed = true;
        }
        off += (std::uint64_t(len) + 7) / 8 * 8;
    }
    if (!placed)
        put(ext_bitmaps, ext);
    area.resize(area.size() + 8);   // end marker
    const std::string& backing = h_.backing_file;
    const std::uint64_t name_off = h_.header_length + area.size();
    if (name_off + backing.size() > c.size())
        co_return errno_error(ENOSPC);
    std::fill(c.begin() + h_.header_length, c.end(), std::byte{0});
    std::memcpy(c.data() + h_.header_length, area.data(), area.size());
    if (!backing.empty()) {
        std::memcpy(c.data() + name_off, backing.data(), backing.size());
        store_be64(c.data() + 8, name_off);
    }
    const std::uint64_t autoclear = nb ? (h_.autoclear | autoclear_bitmaps) : (h_.autoclear & ~autoclear_bitmaps);
    store_be64(c.data() + off_autoclear, autoclear);
    if (auto r = co_await f->write(0, c); !r)
        co_return r;
    if (auto r = co_await f->flush(); !r)
        co_return r;
    if (!backing.empty())
        h_.backing_file_offset = name_off;
    h_.autoclear = autoclear;
    h_.has_bitmaps_ext = nb != 0;
    h_.nb_bitmaps = nb;
    h_.bitmap_directory_size = dir_size;
    h_.bitmap_directory_offset = dir_offset;
    co_return result<void>{};
}

} // namespace bjd::block::qcow2

namespace bjd::block {

std::vector<qcow2_stored_bitmap> qcow2_stored_bitmaps(const node& n)
{
    std::vector<qcow2_stored_bitmap> out;
    if (const auto* q = dynamic_cast<const qcow2::qcow2_node*>(&n))
        for (const auto& e : q->stored_bitmaps())
            out.push_back({e.name, std::uint32_t{1} << e.granularity_bits, (e.flags & qcow2::bme_in_use) != 0,
                           (e.flags & qcow2::bme_auto) != 0});
    return out;
}

} // namespace bjd::block
