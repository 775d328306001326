// SPDX-License-Identifier: MIT
// qcow2 images crafted to make the driver work out of proportion to their size (issue #8),
// found by tests/fuzz/fuzz_qcow2: tables listed twice are refused for writing, still readable.
#include "qcow2_test_util.hpp"

#include "../../../lib/block/src/drivers/qcow2/format.hpp"

#include <filesystem>

using namespace bjd;
using namespace bjd::block;
using namespace bjd::block::test;

namespace {

std::uint64_t get64(const std::vector<std::byte>& d, std::uint64_t off) { return qcow2::load_be64(d.data() + off); }
void put64(std::vector<std::byte>& d, std::uint64_t off, std::uint64_t v) { qcow2::store_be64(d.data() + off, v); }

} // namespace

TEST_CASE("qcow2: tables listed twice are refused read/write and still read", "[qcow2][fuzz]")
{
    env e;
    const std::string img = e.path("x.qcow2");
    // 4 KiB clusters: an L2 table maps 2 MiB, so data at 0 and 8M has two L2 tables.
    REQUIRE(sh("qemu-img create -q -f qcow2 -o cluster_size=4096 " + img + " 16M && qemu-io -f qcow2 -c 'write -P 7 0 4k' "
               "-c 'write -P 8 8M 4k' " + img + " >/dev/null") == 0);
    auto d = slurp(img);
    const std::uint64_t l1 = get64(d, 40), reftable = get64(d, 48);
    REQUIRE(get64(d, l1) != 0);
    REQUIRE(get64(d, l1 + 4 * 8) != 0);
    std::vector<std::byte> buf(4096);

    SECTION("two L1 entries name one L2 table")
    {
        put64(d, l1 + 4 * 8, get64(d, l1));
        spit(img, d);
        auto rw = e.qcow2(img);
        REQUIRE(!rw);
        CHECK(rw.error().desc == "qcow2: Image is corrupt (L2 table at offset " +
                                     std::to_string(get64(d, l1) & qcow2::offset_mask) +
                                     " is referenced twice by the L1 table); cannot be opened read/write");
        auto ro = e.qcow2(img, true);
        REQUIRE(ok(ro));
        REQUIRE(e.run((*ro)->read(8 << 20, buf)));
        CHECK(buf[0] == std::byte{7});   // what the shared table maps
    }
    SECTION("two refcount table entries name one refcount block")
    {
        REQUIRE(get64(d, reftable) != 0);
        put64(d, reftable + 8, get64(d, reftable));
        spit(img, d);
        auto rw = e.qcow2(img);
        REQUIRE(!rw);
        CHECK(rw.error().desc == "qcow2: Image is corrupt (refcount block at offset " +
                                     std::to_string(get64(d, reftable)) +
                                     " is referenced twice by the refcount table); cannot be opened read/write");
        auto ro = e.qcow2(img, true);
        REQUIRE(ok(ro));
        REQUIRE(e.run((*ro)->read(0, buf)));
        CHECK(buf[0] == std::byte{7});
    }
    SECTION("distinct tables still open read/write")
    {
        auto rw = e.qcow2(img);
        REQUIRE(ok(rw));
        REQUIRE(e.run((*rw)->write(0, buf)));
        REQUIRE(e.run((*rw)->flush()));
    }
}

TEST_CASE("qcow2 format: first_duplicate", "[qcow2][format]")
{
    using qcow2::first_duplicate;
    const std::uint64_t copied = 1ull << 63;
    CHECK(first_duplicate(std::vector<std::uint64_t>{}, qcow2::offset_mask) == 0);
    CHECK(first_duplicate(std::vector<std::uint64_t>{0, 0, 0}, qcow2::offset_mask) == 0);   // unallocated
    CHECK(first_duplicate(std::vector<std::uint64_t>{0x3000, copied | 0x2000, 0x1000}, qcow2::offset_mask) == 0);
    // Flags do not make two entries different tables.
    CHECK(first_duplicate(std::vector<std::uint64_t>{0x3000, copied | 0x2000, 0x2000}, qcow2::offset_mask) == 0x2000);
    CHECK(first_duplicate(std::vector<std::uint64_t>{0x5000, 0x1000, 0x5000, 0x1000}, ~std::uint64_t(0x1ff)) == 0x1000);
}

TEST_CASE("qcow2: refcounts claiming clusters past the end of the file do not steer allocation", "[qcow2][fuzz]")
{
    // Every allocation grows the file to cover itself, so a cluster past the end is free
    // whatever a (hostile) refcount block says. Walking such claims one cluster at a time
    // would stall the loop for a long time on a small crafted file.
    env e;
    const std::string img = e.path("r.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " 16M") == 0);   // 64 KiB clusters, 16-bit refcounts
    auto d = slurp(img);
    const std::uint64_t reftable = get64(d, 48);
    const std::uint64_t rb = get64(d, reftable);
    REQUIRE(rb != 0);
    REQUIRE(d.size() >= rb + 65536);
    const std::uint64_t first_past_end = (d.size() + 65535) / 65536;
    for (std::uint64_t c = first_past_end; c < 32768; ++c)   // the whole block's tail claims "in use"
    {
        d[rb + c * 2] = std::byte{0};
        d[rb + c * 2 + 1] = std::byte{1};
    }
    spit(img, d);

    auto rw = e.qcow2(img);
    REQUIRE(ok(rw));
    std::vector<std::byte> buf(65536, std::byte{9});
    REQUIRE(e.run((*rw)->write(0, buf)));
    REQUIRE(e.run((*rw)->flush()));
    // Data and an L2 table right after the old end, not past the 2 GiB the block covers.
    CHECK(std::filesystem::file_size(img) <= d.size() + 3 * 65536);
    std::vector<std::byte> back(65536);
    REQUIRE(e.run((*rw)->read(0, back)));
    CHECK(back == buf);
}
