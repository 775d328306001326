// SPDX-License-Identifier: MIT
// The --state-dir progress file (bjd/jobs/job_state.hpp): round trip, damage, generation.
#include "bjd/jobs/job_state.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <unistd.h>

using namespace bjd;
using jobs::mirror_progress;

namespace {

mirror_progress sample()
{
    mirror_progress p;
    p.generation = "0123456789abcdef0123456789abcdef";
    p.job_id = "job0";
    p.size = 10 * 65536 + 4096;   // 11 chunks, the last one short
    p.granularity = 65536;
    p.offset = 7 * 65536;
    p.len = p.size;
    p.ready = false;
    p.files.push_back({"/images/src.qcow2", 1 << 20, 2049, 1234567, 1700000000123456789});
    p.files.push_back({"/images/dst.raw", 4096, 2049, 42, -5});
    p.bitmap = {0b00000101, 0b00000100};   // chunks 0, 2 and 10
    return p;
}

} // namespace

TEST_CASE("progress file: round trip")
{
    const auto p = sample();
    const std::string bytes = jobs::encode_progress(p);
    auto q = jobs::decode_progress(bytes, p.generation);
    REQUIRE(q.has_value());
    CHECK(q->generation == p.generation);
    CHECK(q->job_id == "job0");
    CHECK(q->size == p.size);
    CHECK(q->granularity == p.granularity);
    CHECK(q->offset == p.offset);
    CHECK(q->len == p.len);
    CHECK(q->ready == false);
    CHECK(q->files == p.files);
    CHECK(q->bitmap == p.bitmap);
    // Two full chunks and the short last one.
    CHECK(q->dirty_bytes() == 2 * 65536 + 4096);
}

TEST_CASE("progress file: damage is found and named")
{
    const auto p = sample();
    const std::string good = jobs::encode_progress(p);

    SECTION("a flipped bit in the bitmap")
    {
        std::string b = good;
        b[b.size() - 5] ^= 0x10;
        auto q = jobs::decode_progress(b, p.generation);
        REQUIRE(!q.has_value());
        CHECK(q.error().desc == "progress file is damaged: checksum mismatch");
    }
    SECTION("truncated")
    {
        for (std::size_t n : {std::size_t(0), std::size_t(7), std::size_t(20), good.size() - 1}) {
            auto q = jobs::decode_progress(std::string_view(good).substr(0, n), p.generation);
            REQUIRE(!q.has_value());
            CHECK_THAT(q.error().desc, Catch::StartsWith("progress file is damaged"));
        }
    }
    SECTION("not a progress file")
    {
        auto q = jobs::decode_progress(std::string(64, 'x'), p.generation);
        REQUIRE(!q.has_value());
        CHECK(q.error().desc == "progress file is damaged: not a blockjobd progress file");
    }
    SECTION("a bitmap that does not fit the size, with a valid checksum")
    {
        auto bad = p;
        bad.bitmap.push_back(0);
        auto q = jobs::decode_progress(jobs::encode_progress(bad), p.generation);
        REQUIRE(!q.has_value());
        CHECK(q.error().desc == "progress file is damaged: bitmap length does not match the image size");
    }
}

TEST_CASE("progress file: another generation is refused")
{
    const auto p = sample();
    auto q = jobs::decode_progress(jobs::encode_progress(p), "ffffffffffffffffffffffffffffffff");
    REQUIRE(!q.has_value());
    CHECK_THAT(q.error().desc, Catch::StartsWith("generation mismatch"));
}

TEST_CASE("crc32 is zlib's")
{
    CHECK(jobs::crc32("123456789") == 0xcbf43926u);
    CHECK(jobs::crc32("") == 0);
}

TEST_CASE("atomic write, read back, durable remove")
{
    char tmpl[] = "/tmp/bjd-state-XXXXXX";
    REQUIRE(::mkdtemp(tmpl));
    const std::string dir = tmpl;
    REQUIRE(bool(jobs::write_file_atomic(dir, "a.progress", "first")));
    REQUIRE(bool(jobs::write_file_atomic(dir, "a.progress", "second")));
    auto r = jobs::read_file(dir + "/a.progress");
    REQUIRE(r.has_value());
    CHECK(*r == "second");
    // No temporary file is left behind.
    int entries = 0;
    for (auto& e : std::filesystem::directory_iterator(dir))
        (void)e, ++entries;
    CHECK(entries == 1);
    REQUIRE(bool(jobs::remove_file_durable(dir, "a.progress")));
    CHECK(!bool(jobs::read_file(dir + "/a.progress")));
    CHECK(bool(jobs::remove_file_durable(dir, "a.progress")));   // absent is fine
    auto bad = jobs::write_file_atomic(dir + "/missing", "x", "y");
    REQUIRE(!bad.has_value());
    CHECK_THAT(bad.error().desc, Catch::Contains("No such file or directory"));
    std::filesystem::remove_all(dir);
}

TEST_CASE("file identity sees a change")
{
    char tmpl[] = "/tmp/bjd-state-XXXXXX";
    REQUIRE(::mkdtemp(tmpl));
    const std::string dir = tmpl;
    REQUIRE(bool(jobs::write_file_atomic(dir, "img", std::string(4096, 'a'))));
    auto a = jobs::identify_file(dir + "/img");
    REQUIRE(a.has_value());
    CHECK(a->size == 4096);
    auto b = jobs::identify_file(dir + "/img");
    REQUIRE(b.has_value());
    CHECK(*a == *b);
    REQUIRE(bool(jobs::write_file_atomic(dir, "img", std::string(8192, 'a'))));   // a new inode and size
    auto c = jobs::identify_file(dir + "/img");
    REQUIRE(c.has_value());
    CHECK(!(*a == *c));
    auto gone = jobs::identify_file(dir + "/nope");
    REQUIRE(!gone.has_value());
    CHECK_THAT(gone.error().desc, Catch::Contains("No such file or directory"));
    std::filesystem::remove_all(dir);
}
