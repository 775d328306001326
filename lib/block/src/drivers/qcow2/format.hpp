// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// qcow2 on-disk format (QEMU docs/interop/qcow2.txt): constants, the header, and its
/// validation. Pure functions over bytes, so crafted images can be tested without I/O.
///
/// Everything here treats the image as untrusted: every offset and size read from the file is
/// checked against the file size and the format's limits before anything is allocated for it.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace bjd::block::qcow2 {

inline constexpr std::uint32_t magic = 0x514649fb;   // "QFI\xfb"
inline constexpr std::uint32_t ext_end = 0x00000000;
inline constexpr std::uint32_t ext_backing_format = 0xe2792aca;
inline constexpr std::uint32_t ext_feature_table = 0x6803f857;
inline constexpr std::uint32_t ext_data_file = 0x44415441;
inline constexpr std::uint32_t ext_bitmaps = 0x23852875;

inline constexpr std::uint64_t incompat_dirty = 1u << 0;
inline constexpr std::uint64_t incompat_corrupt = 1u << 1;
inline constexpr std::uint64_t incompat_data_file = 1u << 2;
inline constexpr std::uint64_t incompat_compression = 1u << 3;
inline constexpr std::uint64_t incompat_extended_l2 = 1u << 4;
inline constexpr std::uint64_t compat_lazy_refcounts = 1u << 0;
inline constexpr std::uint64_t autoclear_bitmaps = 1u << 0;

// L1/L2/refcount-table entries.
inline constexpr std::uint64_t oflag_copied = 1ull << 63;
inline constexpr std::uint64_t oflag_compressed = 1ull << 62;
inline constexpr std::uint64_t oflag_zero = 1ull << 0;
inline constexpr std::uint64_t offset_mask = 0x00fffffffffffe00ull;   // bits 9-55
inline constexpr std::uint64_t l1_reserved = 0x7f000000000001ffull;   // bits 0-8, 56-62
inline constexpr std::uint64_t l2_reserved = 0x3f000000000001feull;   // bits 1-8, 56-61
inline constexpr std::uint64_t reftable_reserved = 0x1ffull;

// Limits: QEMU's implementation limits, which also bound what a crafted header can make us
// allocate (L1 ≤ 32 MiB, refcount table ≤ 8 MiB, clusters 512 B..2 MiB).
inline constexpr unsigned min_cluster_bits = 9;
inline constexpr unsigned max_cluster_bits = 21;
inline constexpr std::uint64_t max_l1_bytes = 32ull << 20;
inline constexpr std::uint64_t max_reftable_bytes = 8ull << 20;
inline constexpr std::uint32_t max_backing_name = 1023;
inline constexpr std::uint64_t max_virtual_size = 1ull << 61;

inline std::uint16_t load_be16(const std::byte* p)
{
    return static_cast<std::uint16_t>((std::to_integer<unsigned>(p[0]) << 8) | std::to_integer<unsigned>(p[1]));
}
inline std::uint32_t load_be32(const std::byte* p)
{
    return (std::uint32_t(load_be16(p)) << 16) | load_be16(p + 2);
}
inline std::uint64_t load_be64(const std::byte* p) { return (std::uint64_t(load_be32(p)) << 32) | load_be32(p + 4); }
inline void store_be32(std::byte* p, std::uint32_t v)
{
    for (int i = 3; i >= 0; --i, v >>= 8)
        p[i] = std::byte(v & 0xff);
}
inline void store_be64(std::byte* p, std::uint64_t v)
{
    store_be32(p, static_cast<std::uint32_t>(v >> 32));
    store_be32(p + 4, static_cast<std::uint32_t>(v));
}

/// The fixed header fields, host byte order, plus what the extensions say.
struct header {
    std::uint32_t version = 0;
    std::uint64_t backing_file_offset = 0;
    std::uint32_t backing_file_size = 0;
    std::uint32_t cluster_bits = 0;
    std::uint64_t size = 0;
    std::uint32_t crypt_method = 0;
    std::uint32_t l1_size = 0;
    std::uint64_t l1_table_offset = 0;
    std::uint64_t refcount_table_offset = 0;
    std::uint32_t refcount_table_clusters = 0;
    std::uint32_t nb_snapshots = 0;
    std::uint64_t snapshots_offset = 0;
    std::uint64_t incompatible = 0;
    std::uint64_t compatible = 0;
    std::uint64_t autoclear = 0;
    std::uint32_t refcount_order = 4;
    std::uint32_t header_length = 72;
    std::uint8_t compression_type = 0;

    // Bitmaps extension (docs/interop/qcow2.txt "Bitmaps extension"); only meaningful when
    // the extension was present and the autoclear "bitmaps" bit is set.
    bool has_bitmaps_ext = false;
    std::uint32_t nb_bitmaps = 0;
    std::uint64_t bitmap_directory_size = 0;
    std::uint64_t bitmap_directory_offset = 0;

    std::string backing_file;     ///< empty: no backing file
    std::string backing_format;   ///< from the extension; empty when absent

    std::uint64_t cluster_size() const noexcept { return 1ull << cluster_bits; }
};

/// Header byte offsets that the driver rewrites.
inline constexpr std::size_t off_size = 24;
inline constexpr std::size_t off_l1_size = 36;                 // + l1_table_offset at 40
inline constexpr std::size_t off_refcount_table_offset = 48;   // + refcount_table_clusters at 56
inline constexpr std::size_t off_incompatible = 72;
inline constexpr std::size_t off_autoclear = 88;

/// Parses and validates the first cluster of an image. `first` holds at least
/// min(file_size, 2 MiB) bytes from offset 0 (the largest possible cluster); `file_size` is
/// the size of the file child. On failure returns false and sets `error` to one phrase.
bool parse_header(std::span<const std::byte> first, std::uint64_t file_size, header& h, std::string& error);

/// Whether the host range [off, off+len) overlaps the header cluster, the L1 table or the
/// refcount table. Used to refuse L2/refcount blocks placed on top of other metadata.
bool overlaps_fixed_metadata(const header& h, std::uint64_t off, std::uint64_t len);

/// What an L2 entry says about one guest cluster.
enum class kind { unallocated, zero_plain, zero_alloc, normal, compressed };

struct mapping {
    kind k = kind::unallocated;
    std::uint64_t host = 0;       ///< normal/zero_alloc: host cluster offset; compressed: byte offset
    std::uint64_t comp_len = 0;   ///< compressed: bytes of compressed data (up to the sector end)
    bool copied = false;          ///< OFLAG_COPIED
};

/// The host bytes an L2 entry holds a reference to: the whole cluster of a data or
/// preallocated zero cluster, the sectors of a compressed one; {0, 0} for entries that hold
/// none (unallocated, plain zero).
inline std::pair<std::uint64_t, std::uint64_t> referenced_bytes(const mapping& m, std::uint64_t cluster_size)
{
    if (m.k == kind::normal || m.k == kind::zero_alloc)
        return {m.host, cluster_size};
    if (m.k == kind::compressed)
        return {m.host & ~std::uint64_t(511), m.comp_len + (m.host & 511)};
    return {0, 0};
}

/// Decodes an L2 entry (host byte order) of the image `h` whose file has `file_size` bytes.
/// Refuses (false, `error` set to one phrase) reserved bits, unaligned or out-of-file data
/// offsets, data on top of the header/L1/refcount table, and compressed data outside the
/// file. The zero flag only counts in version 3; a zero cluster may keep an offset past the
/// end of the file (preallocated, never read).
bool decode_l2_entry(const header& h, std::uint64_t e, std::uint64_t file_size, mapping& m, std::string& error);

/// Decodes an L1 entry: `l2_off` is 0 for an unallocated table. Refuses reserved bits and
/// table offsets that are unaligned, past the end of the file or on fixed metadata.
bool decode_l1_entry(const header& h, std::uint64_t e, std::uint64_t file_size, std::uint64_t& l2_off,
                     std::string& error);

/// The first offset (entry & `mask`, ignoring 0) that appears twice in `entries`, or 0 when
/// every table is listed once. Two L1 entries naming one L2 table, or two refcount table
/// entries naming one refcount block, never happen in an image QEMU wrote; accepting them
/// would let a small crafted file stand for a huge one (every scan over the refcounts or the
/// L2 tables multiplied by the repeats), so writable opens refuse them.
std::uint64_t first_duplicate(std::span<const std::uint64_t> entries, std::uint64_t mask);

/// Refcount entries per refcount block: cluster size * 8 / 2^order.
inline std::uint64_t refblock_entries(const header& h) noexcept
{
    return h.cluster_size() * 8 / (1u << h.refcount_order);
}
/// The largest refcount a 2^order-bit entry holds.
inline std::uint64_t refcount_max(unsigned order) noexcept
{
    return order >= 6 ? ~0ull : (1ull << (1u << order)) - 1;
}

/// Reads entry `i` of a refcount block with 2^order-bit entries.
std::uint64_t refcount_get(std::span<const std::byte> block, unsigned order, std::uint64_t i);
/// Writes entry `i`; the caller checked that `v` fits in 2^order bits.
void refcount_set(std::span<std::byte> block, unsigned order, std::uint64_t i, std::uint64_t v);

// ---- persistent dirty bitmaps (docs/interop/qcow2.txt, "Bitmaps extension") -------------------

inline constexpr std::uint32_t bme_in_use = 1u << 0;
inline constexpr std::uint32_t bme_auto = 1u << 1;
inline constexpr std::uint32_t bme_extra_data_compatible = 1u << 2;
inline constexpr std::uint32_t bme_known_flags = bme_in_use | bme_auto | bme_extra_data_compatible;
inline constexpr std::uint8_t bme_type_dirty_tracking = 1;
/// QEMU's limits (block/qcow2-bitmap.c, block/qcow2.h): granularity 2^9..2^31, names up to
/// 1023 bytes, 65535 bitmaps, a 64 MiB directory, bitmap tables of at most 2^27 entries.
inline constexpr unsigned bme_min_granularity_bits = 9;
inline constexpr unsigned bme_max_granularity_bits = 31;
inline constexpr std::size_t bme_max_name = 1023;
inline constexpr std::uint32_t max_bitmaps = 65535;
inline constexpr std::uint64_t max_bitmap_directory_bytes = 64ull << 20;
inline constexpr std::uint64_t bme_max_table_size = 0x8000000;
/// Bitmap table entries: bits 9-55 the data cluster offset; bit 0 (offset 0 only) "all ones".
inline constexpr std::uint64_t bme_table_reserved = 0xff000000000001feull;
inline constexpr std::uint64_t bme_table_all_ones = 1;

/// One bitmap directory entry, host byte order.
struct bitmap_dir_entry {
    std::uint64_t table_offset = 0;
    std::uint32_t table_size = 0;   ///< entries (8 bytes each)
    std::uint32_t flags = 0;
    std::uint8_t type = bme_type_dirty_tracking;
    std::uint8_t granularity_bits = 16;
    std::vector<std::byte> extra_data;
    std::string name;
    friend bool operator==(const bitmap_dir_entry&, const bitmap_dir_entry&) = default;
};

/// Bytes one directory entry takes: the 24-byte fixed part, extra data and name, padded to 8.
inline std::uint64_t bitmap_dir_entry_size(std::uint64_t name_len, std::uint64_t extra_len) noexcept
{
    return (24 + extra_len + name_len + 7) / 8 * 8;
}
/// Bitmap table entries a bitmap of an image of `size` bytes needs: one per data cluster,
/// each cluster holding cluster_size*8 bits of one granularity each.
inline std::uint64_t bitmap_table_entries(std::uint64_t size, unsigned granularity_bits, std::uint64_t cs) noexcept
{
    const std::uint64_t bits = (size + (1ull << granularity_bits) - 1) >> granularity_bits;
    return (bits + cs * 8 - 1) / (cs * 8);
}

std::vector<std::byte> encode_bitmap_directory(std::span<const bitmap_dir_entry> entries);
/// Decodes `nb` entries from `dir` and checks them against the image `h` (file of
/// `file_size` bytes): known type and flags, granularity, name, table placement and the
/// table size the image's size calls for, unique names. False with `error` set otherwise.
bool decode_bitmap_directory(std::span<const std::byte> dir, std::uint32_t nb, const header& h,
                             std::uint64_t file_size, std::vector<bitmap_dir_entry>& out, std::string& error);
/// The 24 bytes of the bitmaps header extension.
std::vector<std::byte> encode_bitmaps_ext(std::uint32_t nb, std::uint64_t dir_size, std::uint64_t dir_offset);

} // namespace bjd::block::qcow2
