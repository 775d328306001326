// SPDX-License-Identifier: MIT
// qcow2 persistent dirty bitmaps: the bitmap directory's encoding (docs/interop/qcow2.txt,
// "Bitmaps extension") and bitmaps written at close, read by qemu-img and loaded again.
#include "bjd/block/bitmaps.hpp"
#include "bjd/block/driver.hpp"
#include "../../../lib/block/src/drivers/qcow2/format.hpp"

#include "qcow2_test_util.hpp"

using namespace bjd;
using namespace bjd::block;
using namespace bjd::block::test;
namespace q = bjd::block::qcow2;

namespace {

q::header image_header(std::uint64_t size, unsigned cluster_bits)
{
    q::header h;
    h.version = 3;
    h.cluster_bits = cluster_bits;
    h.size = size;
    h.l1_size = 1;
    h.l1_table_offset = 1ull << (cluster_bits + 1);
    h.refcount_table_offset = 1ull << cluster_bits;
    h.refcount_table_clusters = 1;
    return h;
}

/// qemu-img's view of the image's bitmaps: "name granularity flags" per bitmap.
std::string qemu_img_bitmaps(const std::string& img, bool force_share = false)
{
    std::string out;
    REQUIRE(sh("qemu-img info " + std::string(force_share ? "-U " : "") + "--output=json " + img +
                   " | python3 -c 'import json,sys; d=json.load(sys.stdin)[\"format-specific\"][\"data\"]; "
                   "[print(b[\"name\"], b[\"granularity\"], \",\".join(b[\"flags\"])) for b in d.get(\"bitmaps\", [])]'",
               &out) == 0);
    return out;
}

} // namespace

TEST_CASE("qcow2 bitmap directory: encode and decode", "[qcow2][bitmaps]")
{
    const q::header h = image_header(4ull << 20, 16);   // 4 MiB, 64 KiB clusters
    const std::uint64_t fsize = 1ull << 20;
    std::vector<q::bitmap_dir_entry> in(2);
    in[0].table_offset = 0x30000;
    in[0].granularity_bits = 16;
    in[0].table_size = static_cast<std::uint32_t>(q::bitmap_table_entries(h.size, 16, h.cluster_size()));
    in[0].flags = q::bme_auto;
    in[0].name = "abc";   // 24 + 3 bytes, padded to 32
    in[1].table_offset = 0x40000;
    in[1].granularity_bits = 9;
    in[1].table_size = static_cast<std::uint32_t>(q::bitmap_table_entries(h.size, 9, h.cluster_size()));
    in[1].flags = q::bme_in_use;
    in[1].name = "eightchr";   // 24 + 8: exactly 32

    CHECK(in[0].table_size == 1);
    CHECK(q::bitmap_table_entries(h.size, 9, 512) == 2);   // 8192 bits, 4096 per cluster
    auto raw = q::encode_bitmap_directory(in);
    REQUIRE(raw.size() == 64);
    CHECK(q::load_be64(raw.data()) == 0x30000);
    CHECK(q::load_be32(raw.data() + 12) == q::bme_auto);
    CHECK(std::to_integer<int>(raw[16]) == 1);
    CHECK(std::to_integer<int>(raw[17]) == 16);
    CHECK(q::load_be16(raw.data() + 18) == 3);
    CHECK(std::memcmp(raw.data() + 24, "abc", 3) == 0);
    CHECK(std::to_integer<int>(raw[27]) == 0);   // padding

    std::vector<q::bitmap_dir_entry> out;
    std::string err;
    REQUIRE(q::decode_bitmap_directory(raw, 2, h, fsize, out, err));
    CHECK(out == in);

    SECTION("wrong counts")
    {
        CHECK_FALSE(q::decode_bitmap_directory(raw, 3, h, fsize, out, err));
        CHECK(err == "Less bitmaps found than specified in header extension");
        CHECK_FALSE(q::decode_bitmap_directory(raw, 1, h, fsize, out, err));
        CHECK(err == "More bitmaps found than specified in header extension");
    }
    SECTION("constraints")
    {
        auto bad = in;
        SECTION("table size not what the image size needs") { bad[0].table_size = 2; }
        SECTION("unknown flag") { bad[0].flags |= 1u << 5; }
        SECTION("granularity below 512") { bad[0].granularity_bits = 8; }
        SECTION("table past the end of the file") { bad[0].table_offset = fsize; }
        SECTION("unaligned table") { bad[0].table_offset = 0x30200; }
        SECTION("table on the refcount table") { bad[0].table_offset = h.refcount_table_offset; }
        SECTION("unknown type") { bad[0].type = 2; }
        auto r = q::encode_bitmap_directory(bad);
        CHECK_FALSE(q::decode_bitmap_directory(r, 2, h, fsize, out, err));
        CHECK(err == "Bitmap 'abc' doesn't satisfy the constraints");
    }
    SECTION("duplicate names")
    {
        auto dup = in;
        dup[1].name = "abc";
        auto r = q::encode_bitmap_directory(dup);
        CHECK_FALSE(q::decode_bitmap_directory(r, 2, h, fsize, out, err));
    }
    SECTION("extra data needs the compatible flag")
    {
        auto x = in;
        x[0].extra_data.assign(8, std::byte{7});
        auto r = q::encode_bitmap_directory(x);
        CHECK_FALSE(q::decode_bitmap_directory(r, 2, h, fsize, out, err));
        CHECK(err == "Bitmap extra data is not supported");
        x[0].flags |= q::bme_extra_data_compatible;
        r = q::encode_bitmap_directory(x);
        REQUIRE(q::decode_bitmap_directory(r, 2, h, fsize, out, err));
        CHECK(out == x);
    }
}

TEST_CASE("qcow2 persistent bitmaps: written at close, loaded at open", "[qcow2][bitmaps]")
{
    env e;
    const std::string img = e.path("b.qcow2");
    // 512-byte clusters: a 4 MiB bitmap of 512-byte granularity needs two data clusters.
    REQUIRE(sh("qemu-img create -q -f qcow2 -o cluster_size=512 " + img + " 4M") == 0);
    std::vector<std::uint64_t> marks = {0, 513 * 512, 4000 * 512};   // chunks (second cluster of bits stays clean)
    {
        auto n = e.qcow2(img);
        REQUIRE(ok(n));
        auto b = (*n)->add_bitmap("fine", 512);
        b->set_persistent(true);
        for (auto m : marks)
            b->bits().set(m, 1);
        auto off = (*n)->add_bitmap("off", 65536);
        off->set_persistent(true);
        off->set_enabled(false);
        off->bits().set(0, 4ull << 20);   // all of it
        (*n)->add_bitmap("gone", 65536)->bits().set(0, 1);   // not persistent
        REQUIRE((*n)->close_work());
        REQUIRE(e.run((*n)->before_close()).has_value());
        CHECK_FALSE((*n)->close_work());
        REQUIRE(e.run((*n)->flush()).has_value());
    }
    CHECK(qemu_img_bitmaps(img) == "off 65536 \nfine 512 auto\n");
    REQUIRE(sh("qemu-img check -q " + img) == 0);

    {
        auto n = e.qcow2(img);
        REQUIRE(ok(n));
        CHECK((*n)->find_bitmap("gone") == nullptr);
        auto b = (*n)->find_bitmap("fine");
        REQUIRE(b);
        CHECK(b->persistent());
        CHECK(b->enabled());
        CHECK(b->bits().granularity() == 512);
        CHECK(b->bits().count() == marks.size() * 512);
        for (auto m : marks)
            CHECK(b->bits().test(m / 512));
        auto off = (*n)->find_bitmap("off");
        REQUIRE(off);
        CHECK_FALSE(off->enabled());
        CHECK(off->bits().dirty_bytes() == 4ull << 20);
        // Open read-write: in use on disk until closed.
        CHECK(qemu_img_bitmaps(img, true) == "off 65536 in-use\nfine 512 in-use,auto\n");
        REQUIRE(sh("qemu-img check -U -q " + img) == 0);
        b->bits().set(3 * 512, 1);
        REQUIRE(e.run((*n)->before_close()).has_value());
        REQUIRE(e.run((*n)->flush()).has_value());
    }
    CHECK(qemu_img_bitmaps(img) == "off 65536 \nfine 512 auto\n");
    REQUIRE(sh("qemu-img check -q " + img) == 0);
    {
        auto n = e.qcow2(img, true);   // read-only: loaded, nothing written back
        REQUIRE(ok(n));
        auto b = (*n)->find_bitmap("fine");
        REQUIRE(b);
        CHECK(b->bits().count() == (marks.size() + 1) * 512);
        CHECK(b->bits().test(3));
        CHECK_FALSE((*n)->close_work());
    }
    CHECK(qemu_img_bitmaps(img) == "off 65536 \nfine 512 auto\n");
}

TEST_CASE("qcow2 persistent bitmaps: a bitmap qemu-img made records what qemu-io wrote", "[qcow2][bitmaps]")
{
    env e;
    const std::string img = e.path("q.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " 8M") == 0);
    REQUIRE(sh("qemu-img bitmap --add -g 65536 " + img + " b0") == 0);
    REQUIRE(sh("qemu-io -f qcow2 -c 'write 1M 1' -c 'write 7M 128k' " + img + " >/dev/null") == 0);
    auto n = e.qcow2(img);
    REQUIRE(ok(n));
    auto b = (*n)->find_bitmap("b0");
    REQUIRE(b);
    CHECK(b->bits().count() == 3 * 65536);
    CHECK(b->bits().test(16));
    CHECK(b->bits().test(112));
    CHECK(b->bits().test(113));
    CHECK_FALSE(b->bits().test(0));
}
