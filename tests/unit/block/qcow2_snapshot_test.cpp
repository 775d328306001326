// SPDX-License-Identifier: MIT
// qcow2 images with internal snapshots (taken by qemu-img): writes, write-zeroes and discards
// through our driver change the active image only. Clusters and L2 tables the snapshot shares
// (refcount > 1, no OFLAG_COPIED) are copied or dropped, never changed in place; qemu-img
// then finds the image consistent, the snapshot reads as it was taken, and deleting the
// snapshot leaves no leak.
#include "bjd/block/driver.hpp"

#include "qcow2_test_util.hpp"

using namespace bjd;
using namespace bjd::block;
using namespace bjd::block::test;

namespace {

constexpr std::uint64_t K = 1024;
constexpr std::uint64_t C = 64 * K;   // the default cluster size

std::vector<std::byte> pattern(std::size_t n, unsigned char c) { return std::vector<std::byte>(n, std::byte{c}); }

/// The guest bytes of `img` (or of its snapshot `snap`) as qemu-img sees them.
std::vector<std::byte> qemu_contents(env& e, const std::string& img, const std::string& snap = "")
{
    const std::string out = e.path("contents.raw");
    const std::string opt = snap.empty() ? "" : " -l snapshot.name=" + snap;
    REQUIRE(sh("qemu-img convert -f qcow2" + opt + " -O raw " + img + " " + out) == 0);
    return slurp(out);
}

/// The offset of the first byte where `a` and `b` differ (the shorter length if one is a
/// prefix of the other), -1 when they are equal: failures name a place, not megabytes.
std::int64_t diff_at(const std::vector<std::byte>& a, const std::vector<std::byte>& b)
{
    auto [ia, ib] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
    if (ia == a.end() && ib == b.end())
        return -1;
    return ia - a.begin();
}

/// `qemu-img check` finds nothing wrong with `img`; its report, for further checks.
std::string check_clean(const std::string& img)
{
    std::string out;
    CHECK(sh("qemu-img check " + img, &out) == 0);
    INFO(out);
    CHECK(out.find("No errors were found") != std::string::npos);
    return out;
}

/// A qcow2 image of `size` (qemu-img create options `opts`), written by the qemu-io commands
/// `writes`, then snapshotted as s1.
void make_snapshotted(const std::string& img, const std::string& opts, const std::string& size,
                      const std::string& writes)
{
    REQUIRE(sh("qemu-img create -q -f qcow2 " + opts + img + " " + size) == 0);
    REQUIRE(sh("qemu-io " + writes + " " + img + " >/dev/null") == 0);
    REQUIRE(sh("qemu-img snapshot -c s1 " + img) == 0);
}

} // namespace

TEST_CASE("qcow2 writes, write-zeroes and discards leave an internal snapshot intact", "[qcow2][snapshot]")
{
    const std::string compat = GENERATE(as<std::string>{}, "1.1", "0.10");
    const bool v3 = compat == "1.1";
    INFO("compat=" << compat);
    env e;
    const std::string img = e.path("a.qcow2");
    const std::uint64_t size = 1024 * K;
    make_snapshotted(img, "-o compat=" + compat + " ", "1M", "-c 'write -P 0x11 0 1M'");
    const auto original = pattern(size, 0x11);

    // What the active image must read afterwards.
    auto expect = original;
    auto fill = [&](std::uint64_t off, std::uint64_t len, unsigned char c) {
        std::fill_n(expect.begin() + std::ptrdiff_t(off), len, std::byte{c});
    };
    {
        auto q = e.qcow2(img);
        REQUIRE(ok(q));
        node& n = **q;
        // Whole clusters: discard, write-zeroes keeping and dropping the allocation.
        CHECK(e.run(n.discard(0, 2 * C)));
        fill(0, 2 * C, 0);
        if (v3) {
            CHECK(e.run(n.write_zeroes(2 * C, 2 * C, {.may_unmap = false})));
            fill(2 * C, 2 * C, 0);
        }
        CHECK(e.run(n.write_zeroes(4 * C, C, {.may_unmap = true})));
        fill(4 * C, C, 0);
        // A whole-cluster write, a partial one (copy-on-write of the rest), partial zeroes.
        CHECK(e.run(n.write(5 * C, pattern(C, 0x33))));
        fill(5 * C, C, 0x33);
        CHECK(e.run(n.write(6 * C + 4 * K, pattern(4 * K, 0x44))));
        fill(6 * C + 4 * K, 4 * K, 0x44);
        CHECK(e.run(n.write_zeroes(7 * C + 8 * K, 4 * K, {.may_unmap = true})));
        fill(7 * C + 8 * K, 4 * K, 0);
        // The same clusters again, now the active image's own.
        CHECK(e.run(n.write(5 * C + 512, pattern(512, 0x55))));
        fill(5 * C + 512, 512, 0x55);
        CHECK(e.run(n.discard(6 * C, C)));
        fill(6 * C, C, 0);
        REQUIRE(e.run(n.flush()));

        std::vector<std::byte> buf(size);
        REQUIRE(e.run(n.read(0, buf)));
        CHECK(diff_at(buf, expect) == -1);
    }

    check_clean(img);
    CHECK(diff_at(qemu_contents(e, img, "s1"), original) == -1);
    CHECK(diff_at(qemu_contents(e, img), expect) == -1);

    SECTION("going back to the snapshot")
    {
        REQUIRE(sh("qemu-img snapshot -a s1 " + img) == 0);
        check_clean(img);
        CHECK(diff_at(qemu_contents(e, img), original) == -1);
    }
    SECTION("deleting the snapshot leaks nothing")
    {
        REQUIRE(sh("qemu-img snapshot -d s1 " + img) == 0);
        CHECK(check_clean(img).find("leaked") == std::string::npos);
        CHECK(diff_at(qemu_contents(e, img), expect) == -1);
    }
}

TEST_CASE("qcow2 write-zeroes over a preallocated zero cluster shared with a snapshot", "[qcow2][snapshot]")
{
    // A zero cluster that keeps its allocation, then snapshotted: write-zeroes without unmap
    // must not mark the shared cluster as the active image's own (OFLAG_COPIED).
    env e;
    const std::string img = e.path("z.qcow2");
    make_snapshotted(img, "", "256k", "-c 'write -P 0x11 0 256k' -c 'write -z 0 64k'");
    const auto snap = qemu_contents(e, img, "s1");
    {
        auto q = e.qcow2(img);
        REQUIRE(ok(q));
        REQUIRE(e.run((*q)->write_zeroes(0, 128 * K, {.may_unmap = false})));
        REQUIRE(e.run((*q)->flush()));
    }
    check_clean(img);
    CHECK(diff_at(qemu_contents(e, img, "s1"), snap) == -1);
    auto expect = pattern(256 * K, 0x11);
    std::fill_n(expect.begin(), 128 * K, std::byte{0});
    CHECK(diff_at(qemu_contents(e, img), expect) == -1);
    REQUIRE(sh("qemu-img snapshot -d s1 " + img) == 0);
    check_clean(img);
}

TEST_CASE("qcow2 shrinking into an L2 table shared with a snapshot copies it", "[qcow2][snapshot][resize]")
{
    env e;
    const std::string img = e.path("s.qcow2");
    make_snapshotted(img, "", "1M", "-c 'write -P 0x11 0 1M'");
    {
        auto q = e.qcow2(img);
        REQUIRE(ok(q));
        auto r = e.run((*q)->resize(256 * K));   // the table's first entries stay
        INFO((r ? std::string("ok") : r.error().desc));
        REQUIRE(r.has_value());
        r = e.run((*q)->resize(1024 * K));
        REQUIRE(r.has_value());
        REQUIRE(e.run((*q)->flush()));
    }
    check_clean(img);
    CHECK(diff_at(qemu_contents(e, img, "s1"), pattern(1024 * K, 0x11)) == -1);
    auto expect = pattern(1024 * K, 0);
    std::fill_n(expect.begin(), 256 * K, std::byte{0x11});
    CHECK(diff_at(qemu_contents(e, img), expect) == -1);
    REQUIRE(sh("qemu-img snapshot -d s1 " + img) == 0);
    check_clean(img);
}
