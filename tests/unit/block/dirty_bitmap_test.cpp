// SPDX-License-Identifier: MIT
// The dirty bitmap the mirror and named bitmaps share (bjd/block/dirty_bitmap.hpp): chunk
// rounding, counts as QEMU reports them, iteration by bytes and by chunks, merging across
// granularities, resizing; sizes that are not a multiple of the granularity throughout.
#include "bjd/block/dirty_bitmap.hpp"

#include <catch2/catch.hpp>

#include <vector>

using bjd::block::dirty_bitmap;
using area = dirty_bitmap::area;

namespace {

std::vector<area> areas(const dirty_bitmap& b, std::uint64_t from, std::uint64_t to)
{
    std::vector<area> out;
    while (auto a = b.next_dirty_area(from, to)) {
        out.push_back(*a);
        from = a->offset + a->length;
    }
    return out;
}

} // namespace

TEST_CASE("block: dirty bitmap rounds ranges out to chunks and counts them", "[block]")
{
    dirty_bitmap b(10000, 512);   // 20 chunks, the last one 272 bytes
    REQUIRE(b.chunks() == 20);
    REQUIRE(b.count() == 0);
    b.set(600, 100);              // inside chunk 1
    CHECK(b.test(1));
    CHECK_FALSE(b.test(0));
    CHECK(b.count() == 512);
    CHECK(b.dirty_bytes() == 512);
    b.set(1023, 2);               // crosses into chunk 2
    CHECK(b.test(2));
    CHECK(b.count() == 1024);
    b.set(600, 0);                // empty: nothing
    CHECK(b.count() == 1024);

    SECTION("the partial last chunk counts whole in count(), to the end in dirty_bytes()")
    {
        b.set(9999, 1);
        CHECK(b.test(19));
        CHECK(b.count() == 3 * 512);
        CHECK(b.dirty_bytes() == 2 * 512 + 272);
    }
    SECTION("ranges crossing the end are cut there")
    {
        b.set(9800, 1 << 20);
        CHECK(b.test(19));
        CHECK(b.count() == 3 * 512);
        b.set(10000, 512);       // wholly past the end: nothing
        b.set(20000, 1);
        CHECK(b.count() == 3 * 512);
        b.reset(9999, 100);
        CHECK_FALSE(b.test(19));
        CHECK(b.count() == 1024);
    }
    SECTION("reset clears every chunk the range touches, reset_covered only whole ones")
    {
        b.reset_covered(600, 100);    // chunk 1 only partly covered
        CHECK(b.test(1));
        b.reset_covered(512, 1024);   // chunks 1 and 2 exactly
        CHECK(b.count() == 0);
        b.set(0, 10000);
        CHECK(b.count() == 20 * 512);
        b.reset_covered(9500, 500);   // to the end: the short last chunk counts as covered
        CHECK_FALSE(b.test(19));
        CHECK(b.test(18));
        b.reset(511, 2);              // touches chunks 0 and 1
        CHECK_FALSE(b.test(0));
        CHECK_FALSE(b.test(1));
        CHECK(b.count() == 17 * 512);
    }
    SECTION("clear")
    {
        b.clear();
        CHECK(b.count() == 0);
        CHECK(b.dirty_bytes() == 0);
        CHECK_FALSE(b.next_dirty(0));
    }
}

TEST_CASE("block: dirty bitmap iterates dirty chunks with wrap-around", "[block]")
{
    dirty_bitmap b(200 * 4096 + 1, 4096);   // 201 chunks: several 64-bit words, a 1-byte tail
    REQUIRE(b.chunks() == 201);
    CHECK_FALSE(b.next_dirty(0));
    b.set(63 * 4096, 2 * 4096);   // chunks 63, 64: across a word boundary
    b.set(200 * 4096, 1);         // the tail chunk
    CHECK(b.next_dirty(0) == 63u);
    CHECK(b.next_dirty(64) == 64u);
    CHECK(b.next_dirty(65) == 200u);
    CHECK(b.next_dirty(201) == 63u);   // past the end: from the start
    b.reset(200 * 4096, 1);
    CHECK(b.next_dirty(65) == 63u);    // wraps
    CHECK(b.dirty_bytes() == 2 * 4096);
}

TEST_CASE("block: dirty bitmap areas are byte runs cut to the range asked and the size", "[block]")
{
    dirty_bitmap b(1'000'000, 65536);   // 16 chunks, the last 16960 bytes
    CHECK(areas(b, 0, 1'000'000).empty());
    b.set(70000, 1);        // chunk 1
    b.set(140000, 1);       // chunk 2: one run with chunk 1
    b.set(990000, 5);       // chunk 15, the short one
    CHECK(areas(b, 0, 1'000'000) == std::vector<area>{{65536, 131072}, {983040, 16960}});
    // A range starting and ending inside dirty runs.
    CHECK(areas(b, 100000, 990001) == std::vector<area>{{100000, 96608}, {983040, 6961}});
    // Past the end: cut at the size.
    CHECK(areas(b, 999000, 5'000'000) == std::vector<area>{{999000, 1000}});
    CHECK(areas(b, 1'000'000, 5'000'000).empty());
    // A clean range between dirty ones.
    CHECK(areas(b, 196608, 983040).empty());
}

TEST_CASE("block: dirty bitmap merge across granularities", "[block]")
{
    dirty_bitmap coarse(3'000'000, 1 << 20);   // 3 chunks, the last partial
    dirty_bitmap fine(3'000'000, 512);
    fine.set(1'048'575, 2);      // straddles coarse chunks 0 and 1
    fine.set(2'999'999, 1);      // last byte
    coarse.merge(fine);
    CHECK(coarse.test(0));
    CHECK(coarse.test(1));
    CHECK(coarse.test(2));
    CHECK(coarse.count() == 3u << 20);

    dirty_bitmap back(3'000'000, 512);
    back.set(0, 1);
    back.merge(coarse);          // the coarse chunks' bytes, in fine chunks, kept with its own
    CHECK(back.dirty_bytes() == 3'000'000);
    dirty_bitmap empty(3'000'000, 4096);
    back.merge(empty);
    CHECK(back.dirty_bytes() == 3'000'000);
    empty.merge(fine);
    CHECK(areas(empty, 0, 3'000'000) == std::vector<area>{{1'044'480, 8192}, {2'998'272, 1728}});
}

TEST_CASE("block: dirty bitmap follows resizes", "[block]")
{
    dirty_bitmap b(10000, 4096);   // chunks 0..2, the last 1808 bytes
    b.set(9000, 1);
    CHECK(b.dirty_bytes() == 1808);
    SECTION("growing: the old last chunk grows, new chunks are clean")
    {
        b.resize(20000);
        CHECK(b.chunks() == 5);
        CHECK(b.test(2));
        CHECK_FALSE(b.test(3));
        CHECK(b.dirty_bytes() == 4096);
        CHECK(b.count() == 4096);
        b.set(19999, 1);
        CHECK(b.dirty_bytes() == 4096 + 20000 - 16384);
    }
    SECTION("shrinking: chunks past the end go, a cut chunk counts to the new end")
    {
        b.set(5000, 1);   // chunk 1
        b.resize(6000);
        CHECK(b.chunks() == 2);
        CHECK(b.count() == 4096);
        CHECK(b.dirty_bytes() == 6000 - 4096);
        b.resize(10000);  // growing back: the dropped chunk stays clean
        CHECK_FALSE(b.test(2));
        CHECK(b.dirty_bytes() == 4096);
    }
    SECTION("across a word boundary")
    {
        dirty_bitmap w(130 * 512, 512);
        w.set(0, 130 * 512);
        w.resize(65 * 512);
        CHECK(w.count() == 65 * 512);
        w.resize(130 * 512);
        CHECK(w.count() == 65 * 512);
        CHECK(w.next_dirty(65) == 0u);
    }
}
