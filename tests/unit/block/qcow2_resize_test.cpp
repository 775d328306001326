// SPDX-License-Identifier: MIT
// qcow2 resize: growing past the L1 table (a new table, the old one freed), shrinking, and
// the image reopened afterwards by us and checked by qemu-img.
#include "bjd/block/driver.hpp"

#include "qcow2_test_util.hpp"

#include <random>

using namespace bjd;
using namespace bjd::block;
using namespace bjd::block::test;

namespace {

std::uint64_t be_at(const std::string& img, std::size_t off, unsigned bytes)
{
    auto h = slurp(img);
    REQUIRE(h.size() >= off + bytes);
    std::uint64_t v = 0;
    for (unsigned i = 0; i < bytes; ++i)
        v = (v << 8) | std::to_integer<unsigned>(h[off + i]);
    return v;
}
std::uint64_t l1_size(const std::string& img) { return be_at(img, 36, 4); }
std::uint64_t l1_offset(const std::string& img) { return be_at(img, 40, 8); }
std::uint64_t header_size(const std::string& img) { return be_at(img, 24, 8); }

std::vector<std::byte> pattern(std::size_t n, unsigned char c) { return std::vector<std::byte>(n, std::byte{c}); }

std::vector<std::byte> read(env& e, node& n, std::uint64_t off, std::size_t len)
{
    std::vector<std::byte> buf(len, std::byte{0xee});
    REQUIRE(e.run(n.read(off, buf)));
    return buf;
}

void resize(env& e, node& n, std::uint64_t size)
{
    auto r = e.run(n.resize(size));
    INFO((r ? std::string("ok") : r.error().desc));
    REQUIRE(r.has_value());
}

} // namespace

TEST_CASE("qcow2 growth past its L1 table moves the table and keeps the data", "[qcow2][resize]")
{
    env e;
    const std::string img = e.path("a.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " 1M") == 0);
    REQUIRE(sh("qemu-io -c 'write -P 0x11 0 64k' -c 'write -P 0x22 960k 64k' " + img + " >/dev/null") == 0);
    const std::uint64_t old_l1 = l1_offset(img);
    REQUIRE(l1_size(img) == 1);
    const std::uint64_t big = 100ull << 30;
    {
        auto q = e.qcow2(img);
        REQUIRE(ok(q));
        node& n = **q;
        resize(e, n, 2 << 20);                 // one entry still maps 512 MiB: no new table
        CHECK(l1_offset(img) == old_l1);
        CHECK(header_size(img) == 2 << 20);
        resize(e, n, big);
        CHECK(n.size() == big);
        CHECK(header_size(img) == big);
        CHECK(l1_size(img) == 200);
        CHECK(l1_offset(img) != old_l1);
        CHECK(read(e, n, 0, 65536) == pattern(65536, 0x11));
        CHECK(read(e, n, 960 << 10, 65536) == pattern(65536, 0x22));
        CHECK(read(e, n, big - 65536, 65536) == pattern(65536, 0));
        auto d = pattern(65536, 0x44);
        REQUIRE(e.run(n.write(big - 65536, d)));
        REQUIRE(e.run(n.flush()));
    }
    // qemu-img finds no leak (the old table was freed) and no corruption.
    std::string out;
    CHECK(sh("qemu-img check " + img, &out) == 0);
    CHECK(sh("qemu-io -c 'read -P 0x11 0 64k' -c 'read -P 0x22 960k 64k' -c 'read -P 0x44 " +
             std::to_string(big - 65536) + " 64k' " + img + " >/dev/null") == 0);
    // Reopened by us: the new table, the new size, the same data.
    auto q = e.qcow2(img, true);
    REQUIRE(ok(q));
    CHECK((*q)->size() == big);
    CHECK(read(e, **q, 0, 65536) == pattern(65536, 0x11));
    CHECK(read(e, **q, 960 << 10, 65536) == pattern(65536, 0x22));
    CHECK(read(e, **q, big - 65536, 65536) == pattern(65536, 0x44));
}

TEST_CASE("qcow2 growth copies L1 entries not yet written back", "[qcow2][resize]")
{
    // 512-byte clusters: one L1 entry maps 32 KiB, so random writes allocate many L2 tables
    // whose L1 entries sit in memory when the table moves.
    env e;
    const std::string img = e.path("s.qcow2");
    const std::uint64_t size = 1 << 20, big = 64 << 20;
    REQUIRE(sh("qemu-img create -q -f qcow2 -o cluster_size=512 " + img + " " + std::to_string(size)) == 0);
    std::vector<std::byte> model(big, std::byte{0});
    std::mt19937_64 rng(14);
    {
        auto q = e.qcow2(img);
        REQUIRE(ok(q));
        node& n = **q;
        auto scatter = [&](std::uint64_t limit, unsigned count) {
            for (unsigned i = 0; i < count; ++i) {
                std::uint64_t len = 512 * (1 + rng() % 16);
                std::uint64_t off = rng() % (limit - len);
                std::vector<std::byte> d(len, std::byte(1 + rng() % 255));
                REQUIRE(e.run(n.write(off, d)));
                std::copy(d.begin(), d.end(), model.begin() + std::ptrdiff_t(off));
            }
        };
        scatter(size, 200);
        resize(e, n, big);
        CHECK(l1_size(img) == big / (512 * 64));
        scatter(big, 200);
        CHECK(read(e, n, 0, big) == model);
        REQUIRE(e.run(n.flush()));
    }
    CHECK(sh("qemu-img check " + img) == 0);
    auto q = e.qcow2(img, true);
    REQUIRE(ok(q));
    CHECK(read(e, **q, 0, big) == model);
}

TEST_CASE("qcow2 shrinking frees the cut clusters and tables; growing again reads zeroes", "[qcow2][resize]")
{
    env e;
    const std::string img = e.path("a.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " 2G") == 0);
    REQUIRE(sh("qemu-io -c 'write -P 0x11 0 64k' -c 'write -P 0x22 960k 64k' -c 'write -P 0x33 1G 64k' " + img +
               " >/dev/null") == 0);
    {
        auto q = e.qcow2(img);
        REQUIRE(ok(q));
        node& n = **q;
        resize(e, n, 983040 + 512);   // 512 bytes into the cluster of 0x22: it stays
        resize(e, n, 2ull << 30);
        CHECK(read(e, n, 0, 65536) == pattern(65536, 0x11));
        CHECK(read(e, n, 960 << 10, 512) == pattern(512, 0x22));   // the kept last cluster
        CHECK(read(e, n, (960 << 10) + 65536, 65536) == pattern(65536, 0));
        CHECK(read(e, n, 1ull << 30, 65536) == pattern(65536, 0));
        REQUIRE(e.run(n.flush()));
    }
    CHECK(sh("qemu-img check " + img) == 0);
    CHECK(header_size(img) == 2ull << 30);
    // Four clusters of metadata, two of data: the file was cut after them.
    CHECK(slurp(img).size() == 7 * 65536);
}

TEST_CASE("qcow2 resize refusals in QEMU's words", "[qcow2][resize]")
{
    env e;
    const std::string img = e.path("a.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " 1M") == 0);
    auto q = e.qcow2(img);
    REQUIRE(ok(q));
    auto r = e.run((*q)->resize((2 << 20) + 1));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().desc == "The new size must be a multiple of 512");
    r = e.run((*q)->resize(4ull << 50));   // 8 Mi entries of L1 table: more than 32 MiB
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().desc == "Failed to grow the L1 table: File too large");
    CHECK((*q)->size() == 1 << 20);
    REQUIRE(e.run((*q)->flush()));
    CHECK(sh("qemu-img check " + img) == 0);
    CHECK(header_size(img) == 1 << 20);
}

TEST_CASE("qcow2 writes that waited while the image shrank past them fail", "[qcow2][resize]")
{
    env e;
    const std::string img = e.path("a.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " 1G") == 0);
    auto q = e.qcow2(img);
    REQUIRE(ok(q));
    node& n = **q;
    std::optional<qapi::result<void>> resized;
    std::optional<result<void>> written;
    auto data = pattern(65536, 0x5a);
    // Both start at once: the resize holds the metadata lock first, the write waits for it
    // after its range was checked against the old size.
    asio::co_spawn(e.ctx, n.resize(1 << 20), [&](std::exception_ptr, qapi::result<void> r) { resized = r; });
    asio::co_spawn(e.ctx, n.write(512 << 20, data), [&](std::exception_ptr, result<void> r) { written = r; });
    e.ctx.restart();
    e.ctx.run_for(std::chrono::seconds(60));
    REQUIRE(resized);
    REQUIRE(written);
    CHECK(resized->has_value());
    CHECK_FALSE(written->has_value());
    CHECK(n.size() == 1 << 20);
    // Nothing of it landed: grown again, the range reads zeroes.
    resize(e, n, 1 << 30);
    CHECK(read(e, n, 512 << 20, 65536) == pattern(65536, 0));
    REQUIRE(e.run(n.flush()));
    CHECK(sh("qemu-img check " + img) == 0);
}
