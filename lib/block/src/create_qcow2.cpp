// SPDX-License-Identifier: MIT
// qcow2 image creation: option checks (QEMU 7.2's qcow2_co_create order and texts), the
// metadata layout of a new image, and writing it to a node.
#include "bjd/block/create.hpp"

#include "bjd/block/driver.hpp"
#include "bjd/block/graph.hpp"
#include "drivers/qcow2/format.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

namespace bjd::block {

namespace q = qcow2;

namespace {

std::uint64_t div_up(std::uint64_t a, std::uint64_t b) { return (a + b - 1) / b; }

/// The feature name table QEMU writes into every v3 header: (type, bit, name).
struct feature {
    std::uint8_t type;
    std::uint8_t bit;
    const char* name;
};
constexpr feature feature_table[] = {
    {0, 0, "dirty bit"},           {0, 1, "corrupt bit"},      {0, 2, "external data file"},
    {0, 3, "compression type"},    {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},             {2, 1, "raw external data"},
};

} // namespace

qapi::result<void> check_qcow2_create_options(const qcow2_create_options& o)
{
    constexpr const char* need_v3 = "compatibility level 1.1 and above (use version=v3 or greater)";
    if (o.size % 512 != 0)
        return qapi::generic("Image size must be a multiple of 512 bytes");
    if (o.extended_l2 && o.version < 3)
        return qapi::generic(std::string("Extended L2 entries are only supported with ") + need_v3);
    if (!std::has_single_bit(o.cluster_size) || o.cluster_size < (1u << q::min_cluster_bits) ||
        o.cluster_size > (1u << q::max_cluster_bits))
        return qapi::generic("Cluster size must be a power of two between 512 and 2048k");
    if (o.backing_file && o.preallocation != prealloc_mode::off && !o.extended_l2)
        return qapi::generic("Backing file and preallocation can only be used at the same time if extended_l2 is on");
    if (o.backing_format && !o.backing_file)
        return qapi::generic("Backing format cannot be used without backing file");
    if (o.version < 3 && o.lazy_refcounts)
        return qapi::generic(std::string("Lazy refcounts only supported with ") + need_v3);
    if (o.refcount_bits <= 0 || o.refcount_bits > 64 || !std::has_single_bit(std::uint64_t(o.refcount_bits)))
        return qapi::generic("Refcount width must be a power of two and may not exceed 64 bits");
    if (o.version < 3 && o.refcount_bits != 16)
        return qapi::generic("Different refcount widths than 16 bits require compatibility level 1.1 or above "
                             "(use version=v3 or greater)");
    if (o.zstd && o.version < 3)
        return qapi::generic(std::string("Non-zlib compression type is only supported with ") + need_v3);
    // What QEMU can and blockjobd cannot: refused after QEMU's own checks.
    if (o.zstd)
        return qapi::generic("Unknown compression type");
    if (o.extended_l2)
        return qapi::generic("Extended L2 entries are not supported");
    return {};
}

// ---- layout --------------------------------------------------------------------------------------

qapi::result<qcow2_layout> qcow2_layout::plan(const qcow2_create_options& o)
{
    qcow2_layout l;
    l.o_ = o;
    const std::uint64_t cs = l.cs_ = o.cluster_size;
    const std::uint64_t l2e = cs / 8;
    const std::uint64_t rb_entries = cs * 8 / static_cast<std::uint64_t>(o.refcount_bits);

    if (o.backing_file && o.backing_file->size() > q::max_backing_name)
        return qapi::generic("Backing file name too long");
    // QEMU's BDRV_MAX_LENGTH, checked when the new image is resized to its size.
    constexpr std::uint64_t max_length = 9223372035781033984ull;
    if (o.size > max_length)
        return qapi::generic("Could not resize image: offset(" + std::to_string(o.size) + ") exceeds maximum(" +
                             std::to_string(max_length) + ")");
    l.l1_size_ = div_up(o.size, cs * l2e);
    if (l.l1_size_ * 8 > q::max_l1_bytes)
        return qapi::generic("Could not resize image: Failed to grow the L1 table: File too large");
    l.l1_clusters_ = div_up(l.l1_size_ * 8, cs);
    const bool prealloc = o.preallocation != prealloc_mode::off;
    l.l2_count_ = prealloc ? l.l1_size_ : 0;
    const std::uint64_t data_clusters = prealloc ? div_up(o.size, cs) : 0;

    // Refcount blocks cover every cluster including themselves and the table: iterate to
    // the fixed point (it converges in two or three rounds).
    std::uint64_t rt = 1, rb = 1;
    for (;;) {
        const std::uint64_t total = 1 + rt + rb + l.l1_clusters_ + l.l2_count_ + data_clusters;
        const std::uint64_t need_rb = div_up(total, rb_entries);
        const std::uint64_t need_rt = div_up(need_rb * 8, cs);
        if (need_rb <= rb && need_rt <= rt) {
            l.clusters_ = total;
            break;
        }
        rb = std::max(rb, need_rb);
        rt = std::max(rt, need_rt);
    }
    if (rt * cs > q::max_reftable_bytes)
        return qapi::generic("Could not resize image: Reference count table too large");
    l.rt_off_ = cs;
    l.rt_clusters_ = rt;
    l.rb_off_ = l.rt_off_ + rt * cs;
    l.rb_count_ = rb;
    l.l1_off_ = l.rb_off_ + rb * cs;
    l.l2_off_ = l.l1_off_ + l.l1_clusters_ * cs;
    l.data_off_ = l.l2_off_ + l.l2_count_ * cs;
    l.file_end_ = l.data_off_ + data_clusters * cs;
    if (prealloc)
        l.meta_end_ = l.data_off_;
    else if (l.l1_size_ > 0)
        l.meta_end_ = l.l1_off_ + l.l1_size_ * 8;   // QEMU writes only the L1 entries
    else
        l.meta_end_ = l.l1_off_;
    if (!prealloc)
        l.file_end_ = l.meta_end_;

    // The header, its extensions and the backing name must fit in cluster 0. The feature
    // table is informative: QEMU leaves it out when it does not fit with the name.
    std::uint64_t hdr = o.version >= 3 ? 112 : 72;
    if (o.backing_format)
        hdr += 8 + div_up(o.backing_format->size(), 8) * 8;
    hdr += 8;   // end marker
    const std::uint64_t name = o.backing_file ? o.backing_file->size() : 0;
    const std::uint64_t features = 8 + sizeof(feature_table) / sizeof(feature_table[0]) * 48;
    l.with_features_ = o.version >= 3 && hdr + features + name <= cs;
    if (hdr + name > cs)
        return qapi::generic("Could not assign backing file '" + o.backing_file.value_or("") + "' with format '" +
                             o.backing_format.value_or("(null)") + "': No space left on device");
    return l;
}

void qcow2_layout::render_header(std::span<std::byte> c) const
{
    std::byte* p = c.data();
    const std::uint32_t hdr_len = o_.version >= 3 ? 112 : 72;
    q::store_be32(p, q::magic);
    q::store_be32(p + 4, o_.version);
    q::store_be32(p + 20, static_cast<std::uint32_t>(std::countr_zero(cs_)));
    q::store_be64(p + 24, o_.size);
    q::store_be32(p + 36, static_cast<std::uint32_t>(l1_size_));
    q::store_be64(p + 40, l1_size_ ? l1_off_ : 0);
    q::store_be64(p + 48, rt_off_);
    q::store_be32(p + 56, static_cast<std::uint32_t>(rt_clusters_));
    if (o_.version >= 3) {
        q::store_be64(p + 80, o_.lazy_refcounts ? q::compat_lazy_refcounts : 0);
        q::store_be32(p + 96, static_cast<std::uint32_t>(std::countr_zero(std::uint64_t(o_.refcount_bits))));
        q::store_be32(p + 100, hdr_len);
    }
    std::size_t off = hdr_len;
    auto ext = [&](std::uint32_t type, const void* data, std::size_t len) {
        q::store_be32(p + off, type);
        q::store_be32(p + off + 4, static_cast<std::uint32_t>(len));
        std::memcpy(p + off + 8, data, len);
        off += 8 + div_up(len, 8) * 8;
    };
    if (o_.backing_format)
        ext(q::ext_backing_format, o_.backing_format->data(), o_.backing_format->size());
    if (with_features_) {
        std::byte table[sizeof(feature_table) / sizeof(feature_table[0]) * 48]{};
        std::size_t i = 0;
        for (const auto& f : feature_table) {
            table[i] = std::byte(f.type);
            table[i + 1] = std::byte(f.bit);
            std::memcpy(table + i + 2, f.name, std::strlen(f.name));
            i += 48;
        }
        ext(q::ext_feature_table, table, sizeof table);
    }
    off += 8;   // end of extensions
    if (o_.backing_file) {
        q::store_be64(p + 8, off);
        q::store_be32(p + 16, static_cast<std::uint32_t>(o_.backing_file->size()));
        std::memcpy(p + off, o_.backing_file->data(), o_.backing_file->size());
    }
}

void qcow2_layout::render(std::uint64_t off, std::span<std::byte> out) const
{
    std::fill(out.begin(), out.end(), std::byte{0});
    const std::uint64_t end = std::min<std::uint64_t>(off + out.size(), meta_end_);
    std::vector<std::byte> c(cs_);
    const std::uint64_t l2e = cs_ / 8;
    const unsigned order = static_cast<unsigned>(std::countr_zero(std::uint64_t(o_.refcount_bits)));
    const std::uint64_t rb_entries = cs_ * 8 / static_cast<std::uint64_t>(o_.refcount_bits);
    const std::uint64_t data_clusters = l2_count_ ? div_up(o_.size, cs_) : 0;
    for (std::uint64_t ci = off / cs_; ci * cs_ < end; ++ci) {
        std::fill(c.begin(), c.end(), std::byte{0});
        const std::uint64_t at = ci * cs_;
        auto word = [&](std::uint64_t i, std::uint64_t v) { q::store_be64(c.data() + i * 8, v); };
        if (ci == 0) {
            render_header(c);
        } else if (at >= rt_off_ && at < rb_off_) {
            const std::uint64_t first = (at - rt_off_) / 8;
            for (std::uint64_t i = 0; i < l2e && first + i < rb_count_; ++i)
                word(i, rb_off_ + (first + i) * cs_);
        } else if (at >= rb_off_ && at < l1_off_) {
            const std::uint64_t first = (at - rb_off_) / cs_ * rb_entries;
            for (std::uint64_t i = 0; i < rb_entries && first + i < clusters_; ++i)
                q::refcount_set(c, order, i, 1);
        } else if (at >= l1_off_ && at < l2_off_) {
            const std::uint64_t first = (at - l1_off_) / 8;
            for (std::uint64_t i = 0; i < l2e && first + i < l1_size_; ++i)
                word(i, l2_count_ ? (l2_off_ + (first + i) * cs_) | q::oflag_copied : 0);
        } else if (at >= l2_off_ && at < data_off_) {
            const std::uint64_t first = (at - l2_off_) / 8;
            for (std::uint64_t i = 0; i < l2e && first + i < data_clusters; ++i)
                word(i, (data_off_ + (first + i) * cs_) | q::oflag_copied);
        }
        // Copy the overlap of this cluster with [off, end).
        const std::uint64_t from = std::max(at, off), to = std::min(at + cs_, end);
        std::memcpy(out.data() + (from - off), c.data() + (from - at), to - from);
    }
}

// ---- writing -------------------------------------------------------------------------------------

asio::awaitable<qapi::result<void>> format_qcow2(node& file, const qcow2_create_options& o, const std::string& owner)
{
    if (auto r = check_qcow2_create_options(o); !r)
        co_return r;
    auto planned = qcow2_layout::plan(o);
    if (!planned)
        co_return planned.error();
    const qcow2_layout& l = *planned;

    // QEMU's qcow2_co_create: an anonymous BlockBackend taking write and resize, sharing all.
    edge e(parent_kind::anonymous, owner, "root");
    (void)e.set_perms(perm_write | perm_resize, perm_all);   // no node yet: cannot fail
    if (auto r = e.attach(file.shared_from_this()); !r)
        co_return r;

    const std::uint64_t align = std::max<std::uint32_t>(1, file.request_alignment());
    const std::uint64_t cs = l.cluster_size();
    const std::uint64_t want = std::max(l.file_end(), div_up(l.metadata_end(), align) * align);
    if (file.size() < want) {
        if (auto r = co_await file.truncate(want); !r)
            co_return qapi::generic("Could not resize image: " + strerror_text(r.error()));
    }
    // Data clusters of a preallocated image: holes (metadata), reserved blocks (falloc) or
    // written zeroes (full).
    if (l.data_length() > 0 && o.preallocation != prealloc_mode::metadata) {
        constexpr std::uint64_t chunk = 1u << 20;
        std::vector<std::byte> zero(o.preallocation == prealloc_mode::full ? chunk : 0);
        for (std::uint64_t done = 0; done < l.data_length();) {
            const std::uint64_t n = std::min(chunk, l.data_length() - done);
            result<void> r;
            if (o.preallocation == prealloc_mode::full)
                r = co_await file.write(l.data_offset() + done, std::span(zero.data(), n));
            else
                r = co_await file.write_zeroes(l.data_offset() + done, n, zero_flags{false, false});
            if (!r)
                co_return qapi::generic("Could not resize image: Could not preallocate new data: " +
                                        strerror_text(r.error()));
            done += n;
        }
    }
    // Everything but the header first, then the header: until the header is written, the
    // file does not open as qcow2.
    constexpr std::uint64_t chunk = 1u << 20;
    const std::uint64_t meta_end = div_up(l.metadata_end(), align) * align;
    std::vector<std::byte> buf;
    for (std::uint64_t off = cs; off < meta_end;) {
        const std::uint64_t n = std::min(chunk, meta_end - off);
        buf.resize(n);
        l.render(off, buf);
        if (auto r = co_await file.write(off, buf); !r)
            co_return qapi::generic("Could not write refcount table: " + strerror_text(r.error()));
        off += n;
    }
    if (auto r = co_await file.flush(); !r)
        co_return qapi::generic("Could not write qcow2 header: " + strerror_text(r.error()));
    buf.resize(cs);
    l.render(0, buf);
    if (auto r = co_await file.write(0, buf); !r)
        co_return qapi::generic("Could not write qcow2 header: " + strerror_text(r.error()));
    if (auto r = co_await file.flush(); !r)
        co_return qapi::generic("Could not write qcow2 header: " + strerror_text(r.error()));
    co_return qapi::result<void>{};
}

asio::awaitable<qapi::result<void>> create_qcow2(graph& g, const std::string& path, std::uint64_t size,
                                                 const std::string& backing_file, const std::string& backing_fmt,
                                                 std::uint32_t cluster_size, const std::string& owner)
{
    qcow2_create_options o;
    o.size = size;
    if (cluster_size)
        o.cluster_size = cluster_size;
    if (!backing_file.empty())
        o.backing_file = backing_file;
    if (!backing_fmt.empty())
        o.backing_format = backing_fmt;
    if (auto r = check_qcow2_create_options(o); !r)
        co_return r;
    file_create_options fo;
    fo.filename = path;
    if (auto r = co_await create_file(fo); !r)
        co_return r;
    node_options common;
    common.name = "";
    file_open_options fopen;
    fopen.filename = path;
    auto f = open_file(common, fopen, g.engine());
    if (!f)
        co_return f.error();
    co_return co_await format_qcow2(**f, o, owner);
}

} // namespace bjd::block
