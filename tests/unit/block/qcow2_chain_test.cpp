// SPDX-License-Identifier: MIT
// qcow2 through the block graph (blockdev-add options): backing chains from the header,
// explicit `backing`, loops and missing files; and crafted (hostile) images.
#include "bjd/block/graph.hpp"

#include "qcow2_test_util.hpp"

#include "bjd/qapi/codec.hpp"
#include "bjd/qapi/types.hpp"

#include <boost/json/parse.hpp>

#include <algorithm>
#include <cstring>

using namespace bjd;
using namespace bjd::block;
using namespace bjd::block::test;

namespace {

qapi::blockdev_options options(const std::string& json)
{
    auto o = qapi::decode<qapi::blockdev_options>(boost::json::parse(json));
    if (!o)
        FAIL("bad options: " << o.error().desc);
    return *o;
}

std::string qcow2_opts(const std::string& name, const std::string& file, const std::string& extra = "")
{
    return R"({"driver":"qcow2","node-name":")" + name + R"(","file":{"driver":"file","filename":")" + file +
           R"("})" + extra + "}";
}

struct graph_env : env {
    graph g{*eng, *eng};

    qapi::result<std::shared_ptr<node>> add(const std::string& json) { return run(g.add(options(json))); }
    ~graph_env()
    {
        for (auto& n : g.nodes())
            if (n->monitor_owned() && n->parents().empty())
                (void)run(g.del(n->name()));
    }
};

/// base.raw <- mid.qcow2 (v2, relative name, format extension) <- top.qcow2 (no format: probed)
void make_three(env& e)
{
    REQUIRE(sh("cd " + e.dir + " && qemu-img create -q -f raw base.raw 4M && " +
               "qemu-io -f raw -c 'write -P 0x61 0 4M' base.raw >/dev/null && " +
               "qemu-img create -q -f qcow2 -o compat=0.10 -b base.raw -F raw mid.qcow2 4M && " +
               "qemu-io -f qcow2 -c 'write -P 0x62 1M 64k' mid.qcow2 >/dev/null && " +
               "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 4M && " +
               "qemu-io -f qcow2 -c 'write -P 0x63 2M 64k' top.qcow2 >/dev/null") == 0);
    // Hide top's backing-format extension (retype it as an unknown one): the format is probed.
    auto head = slurp(e.path("top.qcow2"));
    const unsigned char ext[4] = {0xe2, 0x79, 0x2a, 0xca};
    auto it = std::search(head.begin(), head.begin() + 65536, reinterpret_cast<const std::byte*>(ext),
                          reinterpret_cast<const std::byte*>(ext) + 4);
    REQUIRE(it != head.begin() + 65536);
    int fd = ::open(e.path("top.qcow2").c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    const unsigned char other[4] = {0x12, 0x34, 0x56, 0x78};
    REQUIRE(::pwrite(fd, other, 4, it - head.begin()) == 4);
    ::close(fd);
}

} // namespace

TEST_CASE("block: qcow2 blockdev-add opens the backing chain named in the header", "[qcow2]")
{
    graph_env e;
    make_three(e);
    auto top = e.add(qcow2_opts("top", e.path("top.qcow2")));
    REQUIRE(ok(top));
    node* mid = (*top)->backing();
    REQUIRE(mid);
    CHECK(mid->driver() == "qcow2");
    CHECK(mid->auto_named());
    CHECK(mid->read_only());
    CHECK(mid->filename() == e.path("mid.qcow2"));
    node* base = mid->backing();
    REQUIRE(base);
    CHECK(base->driver() == "raw");
    CHECK(base->backing() == nullptr);
    CHECK(qcow2_info(**top)->backing_format.empty());
    CHECK(qcow2_info(*mid)->version == 2);

    std::string conv = e.path("conv.raw");
    REQUIRE(sh("qemu-img convert -U -O raw " + e.path("top.qcow2") + " " + conv) == 0);
    auto want = slurp(conv);
    std::vector<std::byte> got((*top)->size());
    REQUIRE(e.run((*top)->read(0, got)));
    CHECK(got == want);
    CHECK(e.g.nodes().size() == 6);   // top, its file, mid, its file, base, its file
}

TEST_CASE("block: qcow2 explicit backing: null, by name, inline", "[qcow2]")
{
    graph_env e;
    make_three(e);
    SECTION("null opens no backing file")
    {
        auto top = e.add(qcow2_opts("top", e.path("top.qcow2"), R"(,"backing":null)"));
        REQUIRE(ok(top));
        CHECK((*top)->backing() == nullptr);
        std::vector<std::byte> b(65536);
        REQUIRE(e.run((*top)->read(0, b)));   // unallocated and no backing: zeroes
        CHECK(std::all_of(b.begin(), b.end(), [](std::byte x) { return x == std::byte{0}; }));
    }
    SECTION("by node-name")
    {
        REQUIRE(ok(e.add(R"({"driver":"raw","node-name":"b0","read-only":true,"file":{"driver":"file","filename":")" +
                         e.path("base.raw") + R"("}})")));
        auto top = e.add(qcow2_opts("top", e.path("top.qcow2"), R"(,"backing":"b0")"));
        REQUIRE(ok(top));
        CHECK((*top)->backing() == e.g.find("b0").get());
    }
    SECTION("inline, read-only by default")
    {
        auto top = e.add(qcow2_opts("top", e.path("top.qcow2"),
                                    R"(,"backing":{"driver":"raw","node-name":"b1","file":{"driver":"file","filename":")" +
                                        e.path("base.raw") + R"("}})"));
        REQUIRE(ok(top));
        REQUIRE((*top)->backing());
        CHECK((*top)->backing()->name() == "b1");
        CHECK((*top)->backing()->read_only());
    }
    SECTION("unknown node")
    {
        auto top = e.add(qcow2_opts("top", e.path("top.qcow2"), R"(,"backing":"nope")"));
        REQUIRE(!top);
        CHECK(top.error().desc == "Could not open backing file: Cannot find device='nope' nor node-name='nope'");
        CHECK(e.g.nodes().empty());
    }
}

TEST_CASE("block: qcow2 chain errors: missing backing file, loops", "[qcow2]")
{
    graph_env e;
    SECTION("missing")
    {
        REQUIRE(sh("cd " + e.dir + " && qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 t.qcow2 1M") == 0);
        auto r = e.add(qcow2_opts("t", e.path("t.qcow2")));
        REQUIRE(!r);
        CHECK(r.error().desc == "Could not open backing file: Could not open '" + e.path("gone.qcow2") +
                                    "': No such file or directory");
        CHECK(e.g.nodes().empty());
    }
    SECTION("loop")
    {
        REQUIRE(sh("cd " + e.dir + " && qemu-img create -q -f qcow2 a.qcow2 1M && " +
                   "qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2 1M && " +
                   "qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2") == 0);
        auto r = e.add(qcow2_opts("a", e.path("a.qcow2")));
        REQUIRE(!r);
        CHECK(r.error().desc.find("creates a loop in the backing chain") != std::string::npos);
        CHECK(e.g.nodes().empty());
    }
}

// ---- crafted images ---------------------------------------------------------------------------

namespace {

void poke(const std::string& path, std::uint64_t off, std::span<const unsigned char> bytes)
{
    int fd = ::open(path.c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(off)) == ssize_t(bytes.size()));
    ::close(fd);
}

void poke_be32(const std::string& p, std::uint64_t off, std::uint32_t v)
{
    unsigned char b[4] = {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16),
                          static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
    poke(p, off, b);
}

void poke_be64(const std::string& p, std::uint64_t off, std::uint64_t v)
{
    poke_be32(p, off, static_cast<std::uint32_t>(v >> 32));
    poke_be32(p, off + 4, static_cast<std::uint32_t>(v));
}

std::uint64_t peek_be64(const std::string& p, std::uint64_t off)
{
    auto d = slurp(p);
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
        v = (v << 8) | std::to_integer<unsigned>(d.at(off + i));
    return v;
}

} // namespace

TEST_CASE("block: qcow2 refuses crafted headers with clear errors", "[qcow2]")
{
    env e;
    std::string img = e.path("x.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " 64M && qemu-io -f qcow2 -c 'write 0 64k' " + img +
               " >/dev/null") == 0);
    auto expect = [&](const std::string& text) {
        auto r = e.qcow2(img);
        REQUIRE(!r);
        CHECK(r.error().desc == text);
    };
    SECTION("not qcow2") { poke_be32(img, 0, 0x12345678); expect("Image is not in qcow2 format"); }
    SECTION("version") { poke_be32(img, 4, 4); expect("Unsupported qcow2 version 4"); }
    SECTION("cluster bits") { poke_be32(img, 20, 31); expect("Unsupported cluster size: 2^31"); }
    SECTION("absurd L1 size") { poke_be32(img, 36, 0x40000000); expect("Active L1 table too large"); }
    SECTION("L1 too small for the size") { poke_be64(img, 24, 1ull << 50); expect("L1 table is too small"); }
    SECTION("L1 past the end") { poke_be64(img, 40, 1ull << 40); expect("Active L1 table offset invalid"); }
    SECTION("L1 unaligned") { poke_be64(img, 40, 0x30001); expect("Active L1 table offset invalid"); }
    SECTION("absurd refcount table") { poke_be32(img, 56, 0x10000000); expect("Reference count table too large"); }
    SECTION("refcount table over the header") { poke_be64(img, 48, 0); expect("Reference count table offset invalid"); }
    SECTION("overlapping tables")
    {
        poke_be64(img, 48, peek_be64(img, 40));   // refcount table on top of the L1 table
        expect("qcow2 metadata tables overlap");
    }
    SECTION("unknown incompatible feature") { poke_be64(img, 72, 1ull << 40); expect("Unsupported qcow2 feature(s): Unknown incompatible feature: 10000000000"); }
    SECTION("named and unknown features together")
    {
        poke_be64(img, 72, (1ull << 4) | (1ull << 40) | (1ull << 41));
        expect("Unsupported qcow2 feature(s): extended L2 entries, Unknown incompatible feature: 30000000000");
    }
    SECTION("extended L2 entries (named by the feature table)")
    {
        poke_be64(img, 72, 1ull << 4);
        expect("Unsupported qcow2 feature(s): extended L2 entries");
    }
    SECTION("encryption") { poke_be32(img, 32, 1); expect("Encrypted qcow2 images are not supported"); }
    SECTION("backing name too long")
    {
        poke_be64(img, 8, 512);
        poke_be32(img, 16, 5000);
        expect("Backing file name too long");
    }
    SECTION("truncated header") { REQUIRE(::truncate(img.c_str(), 60) == 0); expect("Image is not in qcow2 format"); }
    SECTION("truncated tables")
    {
        REQUIRE(::truncate(img.c_str(), 65536 + 100) == 0);
        auto r = e.qcow2(img);
        REQUIRE(!r);   // L1 or refcount table cut off (which one depends on qemu-img's layout)
        CHECK(r.error().desc.find("table offset") != std::string::npos);
    }
    SECTION("corrupt bit: read-only only")
    {
        poke_be64(img, 72, 1ull << 1);
        expect("qcow2: Image is corrupt; cannot be opened read/write");
        CHECK(ok(e.qcow2(img, true)));
    }
}

TEST_CASE("block: qcow2 bogus L2 and data offsets fail the request with EIO", "[qcow2]")
{
    env e;
    std::string img = e.path("y.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " 16M && qemu-io -f qcow2 -c 'write -P 7 0 64k' -c 'write -P 8 8M 64k' " +
               img + " >/dev/null") == 0);
    const std::uint64_t l1 = peek_be64(img, 40);
    const std::uint64_t l2 = peek_be64(img, l1) & 0x00fffffffffffe00ull;
    REQUIRE(l2 != 0);
    std::vector<std::byte> buf(65536);
    SECTION("data cluster past the end of the file")
    {
        poke_be64(img, l2, (1ull << 63) | (1ull << 40));
        auto n = e.qcow2(img);
        REQUIRE(ok(n));
        auto r = e.run((*n)->read(0, buf));
        REQUIRE(!r);
        CHECK(r.error() == std::errc::io_error);
        CHECK(e.run((*n)->read(8 << 20, buf)));   // the rest of the image still reads
        CHECK(!e.run((*n)->write(100, std::span<const std::byte>(buf.data(), 10))));
    }
    SECTION("data cluster at offset 0 (the header)")
    {
        poke_be64(img, l2, 1ull << 63);   // offset 0 with COPIED: only valid with a data file
        auto n = e.qcow2(img);
        REQUIRE(ok(n));
        CHECK(!e.run((*n)->read(0, buf)));
    }
    SECTION("unaligned data cluster")
    {
        poke_be64(img, l2, (1ull << 63) | 0x50200);
        auto n = e.qcow2(img);
        REQUIRE(ok(n));
        CHECK(!e.run((*n)->read(0, buf)));
    }
    SECTION("L2 table offset pointing at the L1 table")
    {
        poke_be64(img, l1, (1ull << 63) | l1);
        auto n = e.qcow2(img);
        REQUIRE(ok(n));
        auto r = e.run((*n)->read(0, buf));
        REQUIRE(!r);
        CHECK(r.error() == std::errc::io_error);
    }
}
