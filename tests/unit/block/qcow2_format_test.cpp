// SPDX-License-Identifier: MIT
// qcow2 on-disk format without I/O: header validation on crafted headers (every refusal and
// the edge just inside each limit), L1/L2 entry decoding, refcount entry packing per order.
#include "../../../lib/block/src/drivers/qcow2/format.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

using namespace bjd::block::qcow2;

namespace {

/// A well-formed header cluster to start from: 64 KiB clusters, 1 GiB, L1 at 3 clusters,
/// refcount table at 1 cluster (one cluster long), the first refcount block at 2.
struct image {
    unsigned version = 3;
    std::vector<std::byte> buf;
    std::uint64_t file_size = 1ull << 20;

    explicit image(unsigned v = 3, unsigned cluster_bits = 16) : version(v), buf(std::size_t(1) << cluster_bits)
    {
        const std::uint64_t cs = 1ull << cluster_bits;
        be32(0, magic);
        be32(4, v);
        be32(20, cluster_bits);
        be64(24, 1ull << 30);
        const std::uint64_t per_l1 = cs * (cs / 8);
        be32(36, static_cast<std::uint32_t>(((1ull << 30) + per_l1 - 1) / per_l1));
        be64(40, 3 * cs);
        be64(48, cs);
        be32(56, 1);
        if (v == 3) {
            be32(96, 4);
            be32(100, 104);
        }
        // Eight clusters for 64 KiB ones (the L1 table fits in one); more for small clusters.
        const std::uint64_t l1_bytes = std::uint64_t(load_be32(buf.data() + 36)) * 8;
        file_size = 3 * cs + (l1_bytes + cs - 1) / cs * cs + 4 * cs;
    }
    void be32(std::size_t off, std::uint32_t x) { store_be32(buf.data() + off, x); }
    void be64(std::size_t off, std::uint64_t x) { store_be64(buf.data() + off, x); }
    /// Appends a header extension at `off`; returns the offset after it.
    std::size_t ext(std::size_t off, std::uint32_t type, const std::string& data)
    {
        be32(off, type);
        be32(off + 4, static_cast<std::uint32_t>(data.size()));
        std::memcpy(buf.data() + off + 8, data.data(), data.size());
        return off + 8 + (data.size() + 7) / 8 * 8;
    }

    std::string parse(header& h) const
    {
        std::string err;
        if (parse_header(buf, file_size, h, err))
            return "ok";
        return err;
    }
    std::string parse() const
    {
        header h;
        return parse(h);
    }
};

} // namespace

TEST_CASE("qcow2 format: well-formed v2 and v3 headers parse", "[qcow2][format]")
{
    header h;
    image v3;
    REQUIRE(v3.parse(h) == "ok");
    CHECK(h.version == 3);
    CHECK(h.cluster_size() == 65536);
    CHECK(h.size == 1ull << 30);
    CHECK(h.l1_size == 2);
    CHECK(h.l1_table_offset == 3 * 65536);
    CHECK(h.refcount_table_offset == 65536);
    CHECK(h.refcount_order == 4);
    CHECK(h.header_length == 104);
    CHECK(h.backing_file.empty());

    image v2(2);
    REQUIRE(v2.parse(h) == "ok");
    CHECK(h.version == 2);
    CHECK(h.refcount_order == 4);   // implied for version 2
    CHECK(h.header_length == 72);
    // Version 2 ignores what would be the v3 fields (here a bogus refcount order).
    v2.be32(96, 9);
    CHECK(v2.parse() == "ok");

    // The smallest and largest cluster sizes.
    image small(3, 9), big(3, 21);
    CHECK(small.parse() == "ok");
    CHECK(big.parse() == "ok");
}

TEST_CASE("qcow2 format: header refusals", "[qcow2][format]")
{
    SECTION("magic, version, truncation")
    {
        image i;
        i.be32(0, 0x514649fa);
        CHECK(i.parse() == "Image is not in qcow2 format");
        image v1(3);
        v1.be32(4, 1);
        CHECK(v1.parse() == "Unsupported qcow2 version 1");
        v1.be32(4, 4);
        CHECK(v1.parse() == "Unsupported qcow2 version 4");
        image t;
        header h;
        std::string err;
        CHECK_FALSE(parse_header(std::span(t.buf.data(), 71), 71, h, err));
        CHECK(err == "Image is not in qcow2 format");
        // A v3 header cut after the v2 fields.
        CHECK_FALSE(parse_header(std::span(t.buf.data(), 100), 100, h, err));
        CHECK(err == "qcow2 header too short (truncated file)");
    }
    SECTION("cluster size")
    {
        image i;
        i.be32(20, 8);
        CHECK(i.parse() == "Unsupported cluster size: 2^8");
        i.be32(20, 22);
        CHECK(i.parse() == "Unsupported cluster size: 2^22");
    }
    SECTION("header length and refcount order")
    {
        image i;
        i.be32(100, 96);
        CHECK(i.parse() == "qcow2 header too short");
        i.be32(100, 108);
        CHECK(i.parse() == "qcow2 header length is not a multiple of 8");
        i.be32(100, 65536 + 8);
        CHECK(i.parse() == "qcow2 header exceeds cluster size");
        image o;
        o.be32(96, 6);
        CHECK(o.parse() == "ok");   // 64-bit refcounts
        o.be32(96, 7);
        CHECK(o.parse() == "Reference count entry width too large; may not exceed 64 bits");
    }
    SECTION("extensions")
    {
        image i;
        std::size_t end = i.ext(104, ext_backing_format, "qcow2");
        i.be32(end, ext_end);
        header h;
        REQUIRE(i.parse(h) == "ok");
        CHECK(h.backing_format == "qcow2");

        image longfmt;
        longfmt.ext(104, ext_backing_format, std::string(16, 'x'));
        CHECK(longfmt.parse() == "Invalid backing format name in the header extension");

        image overflow;
        overflow.be32(104, 0x12345678);
        overflow.be32(108, 65536);   // longer than what is left of the cluster
        CHECK(overflow.parse() == "Invalid qcow2 header extension (length exceeds the header cluster)");

        // Unknown extensions are skipped.
        image unknown;
        end = unknown.ext(104, 0x12345678, "abc");
        unknown.ext(end, ext_backing_format, "raw");
        REQUIRE(unknown.parse(h) == "ok");
        CHECK(h.backing_format == "raw");
    }
    SECTION("feature bits")
    {
        image i;
        i.be64(72, incompat_dirty | incompat_corrupt);
        header h;
        REQUIRE(i.parse(h) == "ok");   // the driver decides what to do with these
        CHECK(h.incompatible == (incompat_dirty | incompat_corrupt));
        i.be64(72, incompat_data_file);
        CHECK(i.parse() == "Unsupported qcow2 feature(s): external data file");
        i.be64(72, incompat_compression | incompat_extended_l2);
        CHECK(i.parse() == "Unsupported qcow2 feature(s): compression type, extended L2 entries");
        i.be64(72, 1ull << 40);
        CHECK(i.parse() == "Unsupported qcow2 feature(s): Unknown incompatible feature: 10000000000");
        // The image's own feature table names the bit.
        std::string entry(48, '\0');
        entry[0] = 0;
        entry[1] = 40;
        entry.replace(2, 10, "frobnicate");
        i.ext(104, ext_feature_table, entry);
        CHECK(i.parse() == "Unsupported qcow2 feature(s): frobnicate");
        // Compatible and autoclear bits never stop an open.
        image c;
        c.be64(80, ~0ull);
        c.be64(88, ~0ull);
        CHECK(c.parse() == "ok");
        image e;
        e.be32(32, 1);
        CHECK(e.parse() == "Encrypted qcow2 images are not supported");
    }
    SECTION("backing file name")
    {
        image i;
        std::memcpy(i.buf.data() + 512, "base.raw", 8);
        i.be64(8, 512);
        i.be32(16, 8);
        header h;
        REQUIRE(i.parse(h) == "ok");
        CHECK(h.backing_file == "base.raw");
        i.be32(16, 1024);
        CHECK(i.parse() == "Backing file name too long");
        i.be32(16, 8);
        i.be64(8, 65536 - 4);   // runs past the header cluster
        CHECK(i.parse() == "Invalid backing file offset");
        i.be64(8, ~0ull);
        CHECK(i.parse() == "Invalid backing file offset");
    }
    SECTION("virtual size and L1 table")
    {
        image i;
        i.be64(24, max_virtual_size + 1);
        CHECK(i.parse() == "Image is too big");
        image small;
        small.be32(36, 1);   // 1 GiB needs 2 entries with 64 KiB clusters
        CHECK(small.parse() == "L1 table is too small");
        image huge;
        huge.be32(36, static_cast<std::uint32_t>(max_l1_bytes / 8 + 1));
        CHECK(huge.parse() == "Active L1 table too large");
        image unaligned;
        unaligned.be64(40, 3 * 65536 + 512);
        CHECK(unaligned.parse() == "Active L1 table offset invalid");
        image zero;
        zero.be64(40, 0);
        CHECK(zero.parse() == "Active L1 table offset invalid");
        image past;
        past.be64(40, past.file_size);
        CHECK(past.parse() == "Active L1 table offset invalid");
        // The last possible place: the table's last byte is the file's last byte.
        image edge;
        edge.be64(40, edge.file_size - 65536);
        CHECK(edge.parse() == "ok");
        // An empty image may have no L1 table at all.
        image empty;
        empty.be64(24, 0);
        empty.be32(36, 0);
        empty.be64(40, 0);
        CHECK(empty.parse() == "ok");
    }
    SECTION("refcount table")
    {
        image none;
        none.be32(56, 0);
        CHECK(none.parse() == "Image does not contain a reference count table");
        image huge;
        huge.be32(56, static_cast<std::uint32_t>(max_reftable_bytes / 65536 + 1));
        CHECK(huge.parse() == "Reference count table too large");
        image unaligned;
        unaligned.be64(48, 65536 + 8);
        CHECK(unaligned.parse() == "Reference count table offset invalid");
        image past;
        past.be32(56, 8);   // 8 clusters from cluster 1 end past the 8-cluster file
        CHECK(past.parse() == "Reference count table offset invalid");
        image wrap;
        wrap.be64(48, 0xffffffffffff0000ull);
        CHECK(wrap.parse() == "Reference count table offset invalid");
    }
    SECTION("snapshots and overlaps")
    {
        image i;
        i.be32(60, 65537);
        CHECK(i.parse() == "Too many snapshots");
        i.be32(60, 1);
        i.be64(64, 5 * 65536 + 512);
        CHECK(i.parse() == "Snapshot table offset invalid");
        i.be64(64, 5 * 65536);
        CHECK(i.parse() == "ok");

        image l1_on_rt;
        l1_on_rt.be64(40, 65536);
        CHECK(l1_on_rt.parse() == "qcow2 metadata tables overlap");
        image rt_on_header;
        rt_on_header.be64(48, 0);
        CHECK(rt_on_header.parse() == "Reference count table offset invalid");
    }
}

TEST_CASE("qcow2 format: fixed metadata overlap", "[qcow2][format]")
{
    header h;
    image i;
    REQUIRE(i.parse(h) == "ok");
    CHECK(overlaps_fixed_metadata(h, 0, 512));                 // header cluster
    CHECK(overlaps_fixed_metadata(h, 65536 + 4096, 512));      // refcount table
    CHECK(overlaps_fixed_metadata(h, 3 * 65536 + 65000, 8));   // L1 (rounded up to its cluster)
    CHECK_FALSE(overlaps_fixed_metadata(h, 2 * 65536, 65536)); // the refcount block's place
    CHECK_FALSE(overlaps_fixed_metadata(h, 4 * 65536, 65536));
    CHECK_FALSE(overlaps_fixed_metadata(h, 4 * 65536, 0));
}

TEST_CASE("qcow2 format: L2 entries", "[qcow2][format]")
{
    header h;
    image i;
    REQUIRE(i.parse(h) == "ok");
    const std::uint64_t fsize = i.file_size;   // 8 clusters
    const std::uint64_t cs = 65536;
    mapping m;
    std::string err;

    REQUIRE(decode_l2_entry(h, 0, fsize, m, err));
    CHECK(m.k == kind::unallocated);

    REQUIRE(decode_l2_entry(h, 5 * cs | oflag_copied, fsize, m, err));
    CHECK(m.k == kind::normal);
    CHECK(m.host == 5 * cs);
    CHECK(m.copied);
    REQUIRE(decode_l2_entry(h, 5 * cs, fsize, m, err));
    CHECK_FALSE(m.copied);

    // Zero clusters: plain, and with a preallocated (kept) offset, even past the end.
    REQUIRE(decode_l2_entry(h, oflag_zero, fsize, m, err));
    CHECK(m.k == kind::zero_plain);
    REQUIRE(decode_l2_entry(h, 6 * cs | oflag_zero | oflag_copied, fsize, m, err));
    CHECK(m.k == kind::zero_alloc);
    CHECK(m.host == 6 * cs);
    REQUIRE(decode_l2_entry(h, 100 * cs | oflag_zero | oflag_copied, fsize, m, err));
    CHECK(m.k == kind::zero_alloc);

    // Version 2 has no zero flag: bit 0 does not make a zero cluster there.
    header h2;
    image v2(2);
    REQUIRE(v2.parse(h2) == "ok");
    REQUIRE(decode_l2_entry(h2, oflag_zero, fsize, m, err));
    CHECK(m.k == kind::unallocated);
    REQUIRE(decode_l2_entry(h2, 5 * cs | oflag_zero, fsize, m, err));
    CHECK(m.k == kind::normal);

    // Refusals.
    CHECK_FALSE(decode_l2_entry(h, 5 * cs | (1ull << 60), fsize, m, err));
    CHECK(err == "reserved bits set in L2 entry");
    CHECK_FALSE(decode_l2_entry(h, 5 * cs | 2, fsize, m, err));
    CHECK(err == "reserved bits set in L2 entry");
    CHECK_FALSE(decode_l2_entry(h, oflag_copied, fsize, m, err));
    CHECK(err == "L2 entry with host offset 0");
    CHECK_FALSE(decode_l2_entry(h, 5 * cs + 512, fsize, m, err));
    CHECK(err == "unaligned data cluster offset " + std::to_string(5 * cs + 512));
    CHECK_FALSE(decode_l2_entry(h, 8 * cs, fsize, m, err));
    CHECK(err == "data cluster at " + std::to_string(8 * cs) + " is past the end of the file");
    CHECK_FALSE(decode_l2_entry(h, cs, fsize, m, err));   // the refcount table
    CHECK(err == "data cluster at 65536 overlaps image metadata");
    CHECK_FALSE(decode_l2_entry(h, 3 * cs | oflag_zero, fsize, m, err));   // L1, even as zero
    // A zero cluster without an offset may carry OFLAG_COPIED; it is still a plain zero.
    REQUIRE(decode_l2_entry(h, oflag_copied | oflag_zero, fsize, m, err));
    CHECK(m.k == kind::zero_plain);
}

TEST_CASE("qcow2 format: compressed L2 entries", "[qcow2][format]")
{
    header h;
    image i;   // 64 KiB clusters: x = 62 - 8 = 54 offset bits, 8 bits of sector count
    REQUIRE(i.parse(h) == "ok");
    const std::uint64_t fsize = i.file_size;
    mapping m;
    std::string err;
    // 3 extra sectors, data starting 100 bytes into a sector: 4 * 512 - 100 bytes.
    const std::uint64_t host = 5 * 65536 + 1024 + 100;
    REQUIRE(decode_l2_entry(h, oflag_compressed | (3ull << 54) | host, fsize, m, err));
    CHECK(m.k == kind::compressed);
    CHECK(m.host == host);
    CHECK(m.comp_len == 4 * 512 - 100);
    CHECK_FALSE(m.copied);
    // The offset bits stop at x: a sector count in bits 54..61 is not part of the offset.
    REQUIRE(decode_l2_entry(h, oflag_compressed | (0xffull << 54) | host, fsize, m, err));
    CHECK(m.host == host);
    CHECK(m.comp_len == 256 * 512 - 100);
    CHECK_FALSE(decode_l2_entry(h, oflag_compressed | 100, fsize, m, err));   // in the header
    CHECK_FALSE(decode_l2_entry(h, oflag_compressed | fsize, fsize, m, err));
    CHECK(err == "compressed cluster at " + std::to_string(fsize) + " is outside the image");

    // 512-byte clusters: x = 61, one bit of sector count.
    header hs;
    image s(3, 9);
    REQUIRE(s.parse(hs) == "ok");
    REQUIRE(decode_l2_entry(hs, oflag_compressed | (1ull << 61) | (40 * 512), s.file_size, m, err));
    CHECK(m.host == 40 * 512);
    CHECK(m.comp_len == 1024);
}

TEST_CASE("qcow2 format: L1 entries", "[qcow2][format]")
{
    header h;
    image i;
    REQUIRE(i.parse(h) == "ok");
    const std::uint64_t fsize = i.file_size;
    const std::uint64_t cs = 65536;
    std::uint64_t off = 1;
    std::string err;
    REQUIRE(decode_l1_entry(h, 0, fsize, off, err));
    CHECK(off == 0);
    REQUIRE(decode_l1_entry(h, 4 * cs | oflag_copied, fsize, off, err));
    CHECK(off == 4 * cs);
    REQUIRE(decode_l1_entry(h, 7 * cs, fsize, off, err));   // the last cluster of the file
    CHECK(off == 7 * cs);
    CHECK_FALSE(decode_l1_entry(h, 4 * cs | 1, fsize, off, err));
    CHECK(err == "reserved bits set in L1 entry");
    CHECK_FALSE(decode_l1_entry(h, 4 * cs | (1ull << 62), fsize, off, err));
    CHECK_FALSE(decode_l1_entry(h, 4 * cs + 512, fsize, off, err));
    CHECK(err == "L2 table offset " + std::to_string(4 * cs + 512) + " is invalid");
    CHECK_FALSE(decode_l1_entry(h, 8 * cs, fsize, off, err));   // past the end
    CHECK_FALSE(decode_l1_entry(h, 3 * cs, fsize, off, err));   // the L1 table itself
    CHECK_FALSE(decode_l1_entry(h, 4 * cs, 4 * cs + 4096, off, err));   // cut short by the file end
}

TEST_CASE("qcow2 format: refcount entries for every order", "[qcow2][format]")
{
    for (unsigned order = 0; order <= 6; ++order) {
        DYNAMIC_SECTION("refcount_bits " << (1u << order))
        {
            const unsigned bits = 1u << order;
            header h;
            h.cluster_bits = 16;
            h.refcount_order = order;
            CHECK(refblock_entries(h) == 65536ull * 8 / bits);
            const std::uint64_t max = refcount_max(order);
            CHECK(max == (bits == 64 ? ~0ull : (1ull << bits) - 1));

            std::vector<std::byte> blk(512);
            const std::uint64_t n = 512 * 8 / bits;
            // Distinct values per entry, each written and read back; neighbours untouched.
            for (std::uint64_t k = 0; k < n; ++k)
                refcount_set(blk, order, k, (k * 0x9e3779b97f4a7c15ull + 1) & max);
            for (std::uint64_t k = 0; k < n; ++k)
                REQUIRE(refcount_get(blk, order, k) == ((k * 0x9e3779b97f4a7c15ull + 1) & max));
            refcount_set(blk, order, 3, max);
            CHECK(refcount_get(blk, order, 3) == max);
            CHECK(refcount_get(blk, order, 2) == ((2 * 0x9e3779b97f4a7c15ull + 1) & max));
            CHECK(refcount_get(blk, order, 4) == ((4 * 0x9e3779b97f4a7c15ull + 1) & max));
            refcount_set(blk, order, 3, 0);
            CHECK(refcount_get(blk, order, 3) == 0);
        }
    }
}

TEST_CASE("qcow2 format: refcount entry layout on disk", "[qcow2][format]")
{
    std::vector<std::byte> blk(16);
    // 16 bits (order 4, QEMU's default): big endian.
    refcount_set(blk, 4, 1, 0x1234);
    CHECK(blk[2] == std::byte{0x12});
    CHECK(blk[3] == std::byte{0x34});
    // 64 bits: big endian.
    std::fill(blk.begin(), blk.end(), std::byte{0});
    refcount_set(blk, 6, 1, 0x0102030405060708ull);
    CHECK(blk[8] == std::byte{0x01});
    CHECK(blk[15] == std::byte{0x08});
    // Sub-byte widths: entry 0 in the least significant bits.
    std::fill(blk.begin(), blk.end(), std::byte{0});
    refcount_set(blk, 0, 0, 1);
    refcount_set(blk, 0, 7, 1);
    CHECK(blk[0] == std::byte{0x81});
    std::fill(blk.begin(), blk.end(), std::byte{0});
    refcount_set(blk, 2, 1, 0xa);   // 4-bit entries: entry 1 is the high nibble
    CHECK(blk[0] == std::byte{0xa0});
    refcount_set(blk, 1, 0, 3);     // 2-bit entries overlapping the same byte
    CHECK(blk[0] == std::byte{0xa3});
    CHECK(refcount_get(blk, 2, 0) == 3);
}
