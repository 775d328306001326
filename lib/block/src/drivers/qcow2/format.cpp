// SPDX-License-Identifier: MIT
// qcow2 header parsing and validation, and refcount entry packing.
#include "format.hpp"

#include <algorithm>
#include <cstdio>
#include <map>
#include <utility>

namespace bjd::block::qcow2 {

namespace {

bool fail(std::string& error, std::string text)
{
    error = std::move(text);
    return false;
}

bool range_in_file(std::uint64_t off, std::uint64_t len, std::uint64_t file_size)
{
    return off <= file_size && len <= file_size - off;
}

bool ranges_overlap(std::uint64_t a, std::uint64_t alen, std::uint64_t b, std::uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/// The incompatible feature names we know, for images without a feature table.
const char* known_incompatible_name(unsigned bit)
{
    switch (bit) {
    case 0: return "dirty bit";
    case 1: return "corrupt bit";
    case 2: return "external data file";
    case 3: return "compression type";
    case 4: return "extended L2 entries";
    default: return nullptr;
    }
}

/// Names of the set bits (from the image's feature table, else ours), then the unnamed rest
/// as one mask — QEMU's wording.
std::string describe_unsupported(std::uint64_t bits, const std::map<unsigned, std::string>& names)
{
    std::string out;
    std::uint64_t unnamed = 0;
    for (unsigned b = 0; b < 64; ++b) {
        if (!(bits & (1ull << b)))
            continue;
        const char* n = nullptr;
        if (auto it = names.find(b); it != names.end() && !it->second.empty())
            n = it->second.c_str();
        else
            n = known_incompatible_name(b);
        if (!n) {
            unnamed |= 1ull << b;
            continue;
        }
        if (!out.empty())
            out += ", ";
        out += n;
    }
    if (unnamed) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "Unknown incompatible feature: %llx", static_cast<unsigned long long>(unnamed));
        if (!out.empty())
            out += ", ";
        out += buf;
    }
    return out;
}

} // namespace

bool parse_header(std::span<const std::byte> first, std::uint64_t file_size, header& h, std::string& error)
{
    h = header{};
    if (first.size() < 72 || load_be32(first.data()) != magic)
        return fail(error, "Image is not in qcow2 format");
    const std::byte* p = first.data();
    h.version = load_be32(p + 4);
    if (h.version != 2 && h.version != 3)
        return fail(error, "Unsupported qcow2 version " + std::to_string(h.version));
    h.backing_file_offset = load_be64(p + 8);
    h.backing_file_size = load_be32(p + 16);
    h.cluster_bits = load_be32(p + 20);
    h.size = load_be64(p + 24);
    h.crypt_method = load_be32(p + 32);
    h.l1_size = load_be32(p + 36);
    h.l1_table_offset = load_be64(p + 40);
    h.refcount_table_offset = load_be64(p + 48);
    h.refcount_table_clusters = load_be32(p + 56);
    h.nb_snapshots = load_be32(p + 60);
    h.snapshots_offset = load_be64(p + 64);

    if (h.cluster_bits < min_cluster_bits || h.cluster_bits > max_cluster_bits)
        return fail(error, "Unsupported cluster size: 2^" + std::to_string(h.cluster_bits));
    const std::uint64_t cs = h.cluster_size();

    if (h.version == 3) {
        if (first.size() < 104)
            return fail(error, "qcow2 header too short (truncated file)");
        h.incompatible = load_be64(p + 72);
        h.compatible = load_be64(p + 80);
        h.autoclear = load_be64(p + 88);
        h.refcount_order = load_be32(p + 96);
        h.header_length = load_be32(p + 100);
        if (h.header_length < 104)
            return fail(error, "qcow2 header too short");
        if (h.header_length > cs)
            return fail(error, "qcow2 header exceeds cluster size");
        if (h.header_length % 8 != 0)
            return fail(error, "qcow2 header length is not a multiple of 8");
        if (h.header_length > first.size())
            return fail(error, "qcow2 header truncated");
        if (h.header_length > 104)
            h.compression_type = std::to_integer<std::uint8_t>(p[104]);
    }
    if (h.refcount_order > 6)
        return fail(error, "Reference count entry width too large; may not exceed 64 bits");

    // Header extensions: between the header and the end of the first cluster (or the
    // backing file name, which must come after them).
    std::uint64_t ext_end_off = std::min<std::uint64_t>(cs, first.size());
    if (h.backing_file_offset != 0 && h.backing_file_offset < ext_end_off)
        ext_end_off = h.backing_file_offset;
    std::map<unsigned, std::string> feature_names;
    for (std::uint64_t off = h.header_length;;) {
        if (off + 8 > ext_end_off)
            break;   // no room for another extension: the area ends here
        std::uint32_t type = load_be32(p + off);
        std::uint32_t len = load_be32(p + off + 4);
        off += 8;
        if (type == ext_end)
            break;
        if (len > ext_end_off - off)
            return fail(error, "Invalid qcow2 header extension (length exceeds the header cluster)");
        const std::byte* d = p + off;
        if (type == ext_backing_format) {
            if (len > 15)
                return fail(error, "Invalid backing format name in the header extension");
            h.backing_format.assign(reinterpret_cast<const char*>(d), len);
        } else if (type == ext_feature_table) {
            for (std::uint32_t i = 0; i + 48 <= len; i += 48) {
                unsigned kind = std::to_integer<unsigned>(d[i]);
                unsigned bit = std::to_integer<unsigned>(d[i + 1]);
                if (kind != 0 || bit > 63)
                    continue;   // only incompatible names matter for errors
                const char* name = reinterpret_cast<const char*>(d + i + 2);
                feature_names[bit] = std::string(name, strnlen(name, 46));
            }
        } else if (type == ext_bitmaps && (h.autoclear & autoclear_bitmaps)) {
            // Only trusted while the autoclear bit says nobody unaware of bitmaps wrote the
            // image since (qcow2.txt); otherwise the bitmaps are dropped, as QEMU does.
            if (len < 24)
                return fail(error, "bitmaps_ext: Invalid extension length");
            if (load_be32(d + 4) != 0)
                return fail(error, "bitmaps_ext: Reserved field is not zero");
            h.has_bitmaps_ext = true;
            h.nb_bitmaps = load_be32(d);
            h.bitmap_directory_size = load_be64(d + 8);
            h.bitmap_directory_offset = load_be64(d + 16);
            if (h.nb_bitmaps == 0)
                return fail(error, "found bitmaps extension with zero bitmaps");
            if (h.nb_bitmaps > max_bitmaps)
                return fail(error, "bitmaps_ext: Image has too many bitmaps");
            if (h.bitmap_directory_size > max_bitmap_directory_bytes)
                return fail(error, "bitmaps_ext: bitmap directory size is too big");
            if ((h.bitmap_directory_offset & (cs - 1)) != 0 || h.bitmap_directory_offset == 0 ||
                !range_in_file(h.bitmap_directory_offset, h.bitmap_directory_size, file_size))
                return fail(error, "bitmaps_ext: invalid bitmap directory offset");
        }
        // Other extensions (data file name, crypto header) are ignored: what depends on
        // them is refused through the feature bits below.
        off += (std::uint64_t(len) + 7) / 8 * 8;
    }

    constexpr std::uint64_t known = incompat_dirty | incompat_corrupt;
    std::uint64_t unsupported = h.incompatible & ~known;
    if (h.incompatible & incompat_compression) {
        // The compression-type bit with zlib (0) would be malformed; anything else is zstd.
        unsupported |= incompat_compression;
    }
    if (unsupported)
        return fail(error, "Unsupported qcow2 feature(s): " + describe_unsupported(unsupported, feature_names));
    if (h.crypt_method != 0)
        return fail(error, "Encrypted qcow2 images are not supported");

    if (h.backing_file_offset != 0) {
        if (h.backing_file_size > max_backing_name)
            return fail(error, "Backing file name too long");
        if (h.backing_file_offset > cs || h.backing_file_size > cs - h.backing_file_offset ||
            h.backing_file_offset + h.backing_file_size > first.size())
            return fail(error, "Invalid backing file offset");
        h.backing_file.assign(reinterpret_cast<const char*>(p + h.backing_file_offset), h.backing_file_size);
    }

    if (h.size > max_virtual_size)
        return fail(error, "Image is too big");
    // Entries one L1 entry maps: one L2 table of cs/8 entries, each one cluster.
    const std::uint64_t bytes_per_l1 = cs * (cs / 8);
    const std::uint64_t l1_needed = (h.size + bytes_per_l1 - 1) / bytes_per_l1;
    if (std::uint64_t(h.l1_size) * 8 > max_l1_bytes)
        return fail(error, "Active L1 table too large");
    if (h.l1_size < l1_needed)
        return fail(error, "L1 table is too small");
    if (h.l1_size > 0 && ((h.l1_table_offset & (cs - 1)) != 0 || h.l1_table_offset == 0 ||
                          !range_in_file(h.l1_table_offset, std::uint64_t(h.l1_size) * 8, file_size)))
        return fail(error, "Active L1 table offset invalid");

    if (h.refcount_table_clusters == 0)
        return fail(error, "Image does not contain a reference count table");
    if (std::uint64_t(h.refcount_table_clusters) * cs > max_reftable_bytes)
        return fail(error, "Reference count table too large");
    if ((h.refcount_table_offset & (cs - 1)) != 0 || h.refcount_table_offset == 0 ||
        !range_in_file(h.refcount_table_offset, std::uint64_t(h.refcount_table_clusters) * cs, file_size))
        return fail(error, "Reference count table offset invalid");

    if (h.nb_snapshots > 65536)
        return fail(error, "Too many snapshots");
    if (h.nb_snapshots > 0 && ((h.snapshots_offset & (cs - 1)) != 0 || h.snapshots_offset >= file_size))
        return fail(error, "Snapshot table offset invalid");

    if (ranges_overlap(h.l1_table_offset, std::uint64_t(h.l1_size) * 8, 0, cs) ||
        ranges_overlap(h.refcount_table_offset, std::uint64_t(h.refcount_table_clusters) * cs, 0, cs) ||
        ranges_overlap(h.l1_table_offset, std::uint64_t(h.l1_size) * 8, h.refcount_table_offset,
                       std::uint64_t(h.refcount_table_clusters) * cs))
        return fail(error, "qcow2 metadata tables overlap");
    return true;
}

bool overlaps_fixed_metadata(const header& h, std::uint64_t off, std::uint64_t len)
{
    const std::uint64_t cs = h.cluster_size();
    return ranges_overlap(off, len, 0, cs) ||
           ranges_overlap(off, len, h.l1_table_offset, (std::uint64_t(h.l1_size) * 8 + cs - 1) / cs * cs) ||
           ranges_overlap(off, len, h.refcount_table_offset, std::uint64_t(h.refcount_table_clusters) * cs);
}

bool decode_l2_entry(const header& h, std::uint64_t e, std::uint64_t file_size, mapping& m, std::string& error)
{
    m = mapping{};
    const std::uint64_t cs = h.cluster_size();
    if (e & oflag_compressed) {
        // Bits 0..x-1: host byte offset; x..61: additional 512-byte sectors (x = 62 - (bits - 8)).
        const unsigned x = 62 - (h.cluster_bits - 8);
        m.k = kind::compressed;
        m.host = e & ((1ull << x) - 1);
        const std::uint64_t extra = (e >> x) & ((1ull << (h.cluster_bits - 8)) - 1);
        m.comp_len = (extra + 1) * 512 - (m.host & 511);
        if (m.host >= file_size || m.host < cs)
            return fail(error, "compressed cluster at " + std::to_string(m.host) + " is outside the image");
        return true;
    }
    if (e & l2_reserved)
        return fail(error, "reserved bits set in L2 entry");
    const std::uint64_t off = e & offset_mask;
    m.copied = (e & oflag_copied) != 0;
    const bool zero = h.version >= 3 && (e & oflag_zero);
    if (off == 0) {
        if (m.copied && !zero)
            return fail(error, "L2 entry with host offset 0");
        m.k = zero ? kind::zero_plain : kind::unallocated;
        return true;
    }
    if ((off & (cs - 1)) != 0)
        return fail(error, "unaligned data cluster offset " + std::to_string(off));
    if (overlaps_fixed_metadata(h, off, cs))
        return fail(error, "data cluster at " + std::to_string(off) + " overlaps image metadata");
    if (!zero && off >= file_size)
        return fail(error, "data cluster at " + std::to_string(off) + " is past the end of the file");
    m.k = zero ? kind::zero_alloc : kind::normal;
    m.host = off;
    return true;
}

bool decode_l1_entry(const header& h, std::uint64_t e, std::uint64_t file_size, std::uint64_t& l2_off,
                     std::string& error)
{
    const std::uint64_t cs = h.cluster_size();
    l2_off = 0;
    if (e & l1_reserved)
        return fail(error, "reserved bits set in L1 entry");
    const std::uint64_t off = e & offset_mask;
    if (off == 0)
        return true;
    if ((off & (cs - 1)) != 0 || off > file_size - std::min(cs, file_size) || overlaps_fixed_metadata(h, off, cs))
        return fail(error, "L2 table offset " + std::to_string(off) + " is invalid");
    l2_off = off;
    return true;
}

std::uint64_t first_duplicate(std::span<const std::uint64_t> entries, std::uint64_t mask)
{
    std::vector<std::uint64_t> offs;
    offs.reserve(entries.size());
    for (std::uint64_t e : entries)
        if (e & mask)
            offs.push_back(e & mask);
    std::sort(offs.begin(), offs.end());
    auto it = std::adjacent_find(offs.begin(), offs.end());
    return it == offs.end() ? 0 : *it;
}

std::uint64_t refcount_get(std::span<const std::byte> block, unsigned order, std::uint64_t i)
{
    const unsigned bits = 1u << order;
    if (bits >= 8) {
        const std::byte* p = block.data() + i * (bits / 8);
        std::uint64_t v = 0;
        for (unsigned b = 0; b < bits / 8; ++b)
            v = (v << 8) | std::to_integer<unsigned>(p[b]);
        return v;
    }
    // Sub-byte widths: entry 0 is in the least significant bits of byte 0.
    std::uint64_t bit = i * bits;
    unsigned byte = std::to_integer<unsigned>(block[bit / 8]);
    return (byte >> (bit % 8)) & ((1u << bits) - 1);
}

void refcount_set(std::span<std::byte> block, unsigned order, std::uint64_t i, std::uint64_t v)
{
    const unsigned bits = 1u << order;
    if (bits >= 8) {
        std::byte* p = block.data() + i * (bits / 8);
        for (int b = int(bits / 8) - 1; b >= 0; --b, v >>= 8)
            p[b] = std::byte(v & 0xff);
        return;
    }
    std::uint64_t bit = i * bits;
    unsigned mask = ((1u << bits) - 1) << (bit % 8);
    unsigned byte = std::to_integer<unsigned>(block[bit / 8]);
    byte = (byte & ~mask) | ((unsigned(v) << (bit % 8)) & mask);
    block[bit / 8] = std::byte(byte);
}

std::vector<std::byte> encode_bitmap_directory(std::span<const bitmap_dir_entry> entries)
{
    std::uint64_t total = 0;
    for (const auto& e : entries)
        total += bitmap_dir_entry_size(e.name.size(), e.extra_data.size());
    std::vector<std::byte> out(total);
    std::byte* p = out.data();
    for (const auto& e : entries) {
        store_be64(p, e.table_offset);
        store_be32(p + 8, e.table_size);
        store_be32(p + 12, e.flags);
        p[16] = std::byte(e.type);
        p[17] = std::byte(e.granularity_bits);
        p[18] = std::byte((e.name.size() >> 8) & 0xff);
        p[19] = std::byte(e.name.size() & 0xff);
        store_be32(p + 20, static_cast<std::uint32_t>(e.extra_data.size()));
        // memcpy of an empty vector's data() (null) is undefined, however short.
        if (!e.extra_data.empty())
            std::memcpy(p + 24, e.extra_data.data(), e.extra_data.size());
        if (!e.name.empty())
            std::memcpy(p + 24 + e.extra_data.size(), e.name.data(), e.name.size());
        p += bitmap_dir_entry_size(e.name.size(), e.extra_data.size());
    }
    return out;
}

bool decode_bitmap_directory(std::span<const std::byte> dir, std::uint32_t nb, const header& h,
                             std::uint64_t file_size, std::vector<bitmap_dir_entry>& out, std::string& error)
{
    out.clear();
    const std::uint64_t cs = h.cluster_size();
    std::uint64_t off = 0;
    for (std::uint32_t i = 0; i < nb; ++i) {
        if (dir.size() - off < 24)
            return fail(error, "Less bitmaps found than specified in header extension");
        const std::byte* p = dir.data() + off;
        bitmap_dir_entry e;
        e.table_offset = load_be64(p);
        e.table_size = load_be32(p + 8);
        e.flags = load_be32(p + 12);
        e.type = std::to_integer<std::uint8_t>(p[16]);
        e.granularity_bits = std::to_integer<std::uint8_t>(p[17]);
        const std::uint32_t name_size = load_be16(p + 18);
        const std::uint32_t extra = load_be32(p + 20);
        const std::uint64_t sz = bitmap_dir_entry_size(name_size, extra);
        if (sz > dir.size() - off)
            return fail(error, "Less bitmaps found than specified in header extension");
        e.extra_data.assign(p + 24, p + 24 + extra);
        e.name.assign(reinterpret_cast<const char*>(p + 24 + extra), name_size);
        if (extra != 0 && !(e.flags & bme_extra_data_compatible))
            return fail(error, "Bitmap extra data is not supported");
        const bool ok = e.type == bme_type_dirty_tracking && !(e.flags & ~bme_known_flags) &&
                        e.granularity_bits >= bme_min_granularity_bits &&
                        e.granularity_bits <= bme_max_granularity_bits && name_size != 0 &&
                        name_size <= bme_max_name && e.table_size <= bme_max_table_size &&
                        e.table_size == bitmap_table_entries(h.size, e.granularity_bits, cs) &&
                        (e.table_offset & (cs - 1)) == 0 && e.table_offset != 0 &&
                        range_in_file(e.table_offset, std::uint64_t(e.table_size) * 8, file_size) &&
                        !overlaps_fixed_metadata(h, e.table_offset, std::uint64_t(e.table_size) * 8);
        if (!ok)
            return fail(error, "Bitmap '" + e.name + "' doesn't satisfy the constraints");
        for (const auto& o : out)
            if (o.name == e.name)
                return fail(error, "Bitmap '" + e.name + "' is listed twice in the bitmap directory");
        out.push_back(std::move(e));
        off += sz;
    }
    if (off != dir.size())
        return fail(error, "More bitmaps found than specified in header extension");
    return true;
}

std::vector<std::byte> encode_bitmaps_ext(std::uint32_t nb, std::uint64_t dir_size, std::uint64_t dir_offset)
{
    std::vector<std::byte> out(24);
    store_be32(out.data(), nb);
    store_be64(out.data() + 8, dir_size);
    store_be64(out.data() + 16, dir_offset);
    return out;
}

} // namespace bjd::block::qcow2
