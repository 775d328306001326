// SPDX-License-Identifier: MIT
// qcow2 compressed cluster writes (node::write_compressed): read back by blockjobd and by
// qemu-img (check, compare), packed several to a host cluster, refused where QEMU refuses.
#include "bjd/block/driver.hpp"

#include "qcow2_test_util.hpp"

#include <cstring>
#include <filesystem>
#include <random>

using namespace bjd;
using namespace bjd::block;
using namespace bjd::block::test;

namespace {

constexpr std::uint64_t cs = 64 << 10;

std::vector<std::byte> read_all(env& e, node& n)
{
    std::vector<std::byte> out(n.size());
    REQUIRE(e.run(n.read(0, out)));
    return out;
}

/// `qemu-img check` of `img`: clean, and the number of compressed clusters it counts.
std::uint64_t checked_compressed_clusters(const std::string& img)
{
    std::string out;
    REQUIRE(sh("qemu-img check --output=json -f qcow2 " + img +
                   " | python3 -c 'import json,sys; d=json.load(sys.stdin); "
                   "print(d[\"check-errors\"], d.get(\"leaks\", 0), d.get(\"corruptions\", 0), "
                   "d[\"compressed-clusters\"])'",
               &out) == 0);
    unsigned long errors = 9, leaks = 9, corruptions = 9, compressed = 0;
    REQUIRE(std::sscanf(out.c_str(), "%lu %lu %lu %lu", &errors, &leaks, &corruptions, &compressed) == 4);
    CHECK(errors == 0);
    CHECK(leaks == 0);
    CHECK(corruptions == 0);
    return compressed;
}

} // namespace

TEST_CASE("block: qcow2 compressed writes round trip through blockjobd and qemu-img", "[qcow2][compress]")
{
    env e;
    const std::string img = e.path("c.qcow2");
    const std::uint64_t size = 2 * 1024 * 1024 + 4096;   // the last cluster is 4 KiB
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " " + std::to_string(size)) == 0);
    std::vector<std::byte> model(size);

    // 16 compressible clusters (a pattern per 4 KiB), one random one, the short last one.
    for (std::uint64_t i = 0; i < 16 * cs; ++i)
        model[i] = std::byte(static_cast<unsigned char>((i / 4096) * 7 + (i % 13 == 0)));
    std::mt19937 rng(7);
    for (std::uint64_t i = 20 * cs; i < 21 * cs; ++i)
        model[i] = std::byte(static_cast<unsigned char>(rng()));
    for (std::uint64_t i = 32 * cs; i < size; ++i)
        model[i] = std::byte{0x5a};

    {
        auto n = e.qcow2(img);
        REQUIRE(ok(n));
        node& q = **n;
        REQUIRE(q.supports_compressed_writes());
        std::span<const std::byte> m(model);
        REQUIRE(e.run(q.write_compressed(0, m.subspan(0, 16 * cs))));
        REQUIRE(e.run(q.write_compressed(20 * cs, m.subspan(20 * cs, cs))));
        REQUIRE(e.run(q.write_compressed(32 * cs, m.subspan(32 * cs))));   // ends the image

        SECTION("refused requests change nothing")
        {
            auto err = [&](std::uint64_t off, std::uint64_t len) {
                auto r = e.run(q.write_compressed(off, m.subspan(off, len)));
                REQUIRE_FALSE(r);
                return r.error();
            };
            CHECK(err(cs + 512, cs) == std::errc::invalid_argument);    // not cluster aligned
            CHECK(err(24 * cs, cs / 2) == std::errc::invalid_argument);   // not a whole cluster
            CHECK(err(3 * cs, cs) == std::errc::io_error);              // compressed already
            // Over a normal cluster: refused when it would be compressed; QEMU writes data that
            // does not shrink as a normal write, which may overwrite.
            auto r = e.run(q.write_compressed(20 * cs, m.subspan(0, cs)));
            REQUIRE_FALSE(r);
            CHECK(r.error() == std::errc::io_error);
            REQUIRE(e.run(q.write_compressed(20 * cs, m.subspan(20 * cs, cs))));
        }

        REQUIRE(read_all(e, q) == model);
        REQUIRE(e.run(q.flush()));
    }
    spit(e.path("model.raw"), model);
    CHECK(sh("qemu-img compare -q -f raw -F qcow2 " + e.path("model.raw") + " " + img) == 0);
    // The random cluster did not shrink: written as it is. The 16 + 1 others are compressed.
    CHECK(checked_compressed_clusters(img) == 17);
    // 17 clusters of data, packed into a few host clusters: far below 17 * 64 KiB + metadata.
    const auto file_size = std::filesystem::file_size(img);
    CHECK(file_size < 8 * cs);

    SECTION("opened again: read back, then partly overwritten")
    {
        auto n = e.qcow2(img);
        REQUIRE(ok(n));
        node& q = **n;
        REQUIRE(read_all(e, q) == model);
        // Copy-on-write out of a compressed cluster that shares its host cluster with others,
        // and a write-zeroes over another: their references go, the neighbours stay readable.
        std::vector<std::byte> patch(1000, std::byte{0xee});
        REQUIRE(e.run(q.write(5 * cs + 100, patch)));
        std::memset(model.data() + 5 * cs + 100, 0xee, patch.size());
        REQUIRE(e.run(q.write_zeroes(6 * cs, cs, {.may_unmap = true})));
        std::memset(model.data() + 6 * cs, 0, cs);
        // A zeroed cluster holds no host bytes: it may be written compressed again.
        std::span<const std::byte> m(model);
        std::memset(model.data() + 6 * cs, 0x42, cs);
        REQUIRE(e.run(q.write_compressed(6 * cs, m.subspan(6 * cs, cs))));
        REQUIRE(read_all(e, q) == model);
        REQUIRE(e.run(q.flush()));
        n->reset();
        spit(e.path("model.raw"), model);
        CHECK(sh("qemu-img compare -q -f raw -F qcow2 " + e.path("model.raw") + " " + img) == 0);
        CHECK(checked_compressed_clusters(img) == 16);
    }
}

TEST_CASE("block: compressed writes where the driver has none", "[qcow2][compress]")
{
    env e;
    const std::string img = e.path("r.img");
    REQUIRE(sh("truncate -s 1M " + img) == 0);
    auto n = e.raw(img, false);
    CHECK_FALSE(n->supports_compressed_writes());
    std::vector<std::byte> data(cs, std::byte{1});
    auto r = e.run(n->write_compressed(0, data));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::operation_not_supported);
}
