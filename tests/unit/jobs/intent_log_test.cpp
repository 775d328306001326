// SPDX-License-Identifier: MIT
// The write-intent log of a mirror kept in --state-dir: its file format, the merge with a
// checkpoint, and the runtime's group commit and clearing rules (state/intent_log.hpp).
#include "bjd/jobs/job_state.hpp"

#include "../../../lib/jobs/src/state/intent_log.hpp"
#include "io/io_test_util.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <filesystem>
#include <set>
#include <string>

using namespace bjd;
namespace asio = boost::asio;
using jobs::intent_record;

namespace {

constexpr std::uint64_t MiB = 1 << 20;
const std::string gen = "0123456789abcdef0123456789abcdef";

intent_record record(std::uint64_t seq, std::set<std::uint64_t> marked)
{
    intent_record r;
    r.seq = seq;
    r.generation = gen;
    r.size = 100 * MiB + 4096;   // 26 regions of 4 MiB, the last one short
    r.region = 4 * MiB;
    r.bitmap.assign((r.regions() + 7) / 8, 0);
    for (auto m : marked)
        r.set(m);
    return r;
}

std::set<std::uint64_t> marked_of(const intent_record& r)
{
    std::set<std::uint64_t> out;
    for (std::uint64_t i = 0; i < r.regions(); ++i)
        if (r.test(i))
            out.insert(i);
    return out;
}

} // namespace

TEST_CASE("write-intent log: region size")
{
    CHECK(jobs::intent_region_size(64 * MiB, 65536) == 4 * MiB);
    CHECK(jobs::intent_region_size(256ull << 30, 65536) == 4 * MiB);        // 65536 regions
    CHECK(jobs::intent_region_size((256ull << 30) + 1, 65536) == 8 * MiB);
    CHECK(jobs::intent_region_size(1ull << 40, 65536) == 16 * MiB);
    CHECK(jobs::intent_region_size(64 * MiB, 16 * MiB) == 16 * MiB);        // never below the granularity
    CHECK(jobs::intent_slot_size(100 * MiB, 4 * MiB) == 4096);
    CHECK(jobs::intent_slot_size(1ull << 40, 16 * MiB) == 12288);          // 8 KiB bitmap + header
}

TEST_CASE("write-intent log: round trip, the newer slot wins")
{
    const auto a = record(1, {0, 7, 25});
    std::string file = jobs::encode_intent_log(a);
    CHECK(file.size() == 2 * 4096);
    auto d = jobs::decode_intent_log(file, gen);
    REQUIRE(d.has_value());
    CHECK(d->seq == 1);
    CHECK(d->size == a.size);
    CHECK(d->region == a.region);
    CHECK(marked_of(*d) == std::set<std::uint64_t>{0, 7, 25});
    CHECK(d->marked() == 3);

    // Record 2 goes to slot 0, beside record 1.
    const auto b = record(2, {0, 3});
    const std::string slot = jobs::encode_intent_slot(b);
    REQUIRE(slot.size() == 4096);
    file.replace(0, slot.size(), slot);
    d = jobs::decode_intent_log(file, gen);
    REQUIRE(d.has_value());
    CHECK(d->seq == 2);
    CHECK(marked_of(*d) == std::set<std::uint64_t>{0, 3});

    SECTION("a torn write of the newer slot leaves the older record")
    {
        file[40 + 5] ^= 0x01;   // inside the generation: the checksum no longer matches
        d = jobs::decode_intent_log(file, gen);
        REQUIRE(d.has_value());
        CHECK(d->seq == 1);
        CHECK(marked_of(*d) == std::set<std::uint64_t>{0, 7, 25});
    }
    SECTION("a record in the wrong slot is not taken")
    {
        const auto c = record(4, {9});   // even seq belongs in slot 0
        const std::string s4 = jobs::encode_intent_slot(c);
        file.replace(4096, s4.size(), s4);
        d = jobs::decode_intent_log(file, gen);
        REQUIRE(d.has_value());
        CHECK(d->seq == 2);
    }
    SECTION("both slots damaged")
    {
        file[69] ^= 0x40;   // in the bitmaps (the padding after the checksum is not covered)
        file[4096 + 69] ^= 0x40;
        d = jobs::decode_intent_log(file, gen);
        REQUIRE(!d.has_value());
        CHECK(d.error().desc == "write-intent log is damaged: no valid record");
    }
    SECTION("a short file")
    {
        d = jobs::decode_intent_log(std::string_view(file).substr(0, 4096), gen);
        REQUIRE(!d.has_value());
        CHECK_THAT(d.error().desc, Catch::StartsWith("write-intent log is damaged: wrong size"));
    }
    SECTION("another generation")
    {
        d = jobs::decode_intent_log(file, "ffffffffffffffffffffffffffffffff");
        REQUIRE(!d.has_value());
        CHECK_THAT(d.error().desc, Catch::StartsWith("generation mismatch (write-intent log 0123"));
    }
}

TEST_CASE("write-intent log: merged into a checkpoint")
{
    jobs::mirror_progress p;
    p.generation = gen;
    p.size = 100 * MiB + 4096;
    p.granularity = 1 * MiB;   // 101 chunks
    p.bitmap.assign((p.chunks() + 7) / 8, 0);
    p.bitmap[0] = 0b10;   // chunk 1 was left at the checkpoint
    const auto log = record(3, {2, 25});   // chunks 8-11, and 100 (the short tail)
    REQUIRE(bool(jobs::merge_intent(p, log)));
    std::set<std::uint64_t> dirty;
    for (std::uint64_t c = 0; c < p.chunks(); ++c)
        if ((p.bitmap[c / 8] >> (c % 8)) & 1u)
            dirty.insert(c);
    CHECK(dirty == std::set<std::uint64_t>{1, 8, 9, 10, 11, 100});
    CHECK(p.dirty_bytes() == 5 * MiB + 4096);

    auto other = log;
    other.size = 2 * p.size;
    other.bitmap.assign((other.regions() + 7) / 8, 0);
    auto r = jobs::merge_intent(p, other);
    REQUIRE(!r.has_value());
    CHECK_THAT(r.error().desc, Catch::Contains("describe different images"));
}

TEST_CASE("write-intent log: group commit, fast path and clearing")
{
    asio::io_context ctx;
    auto engine = io::make_engine(ctx, io::backend::threads);
    char tmpl[] = "/tmp/bjd-wil-XXXXXX";
    REQUIRE(::mkdtemp(tmpl));
    const std::string dir = tmpl;
    const std::uint64_t size = 100 * MiB;
    auto log = std::make_shared<jobs::detail::intent_log>(ctx.get_executor(), *engine, size, 4 * MiB, gen);
    auto on_disk = [&] {
        auto b = jobs::read_file(dir + "/j.wil");
        REQUIRE(b.has_value());
        auto d = jobs::decode_intent_log(*b, gen);
        REQUIRE(d.has_value());
        return marked_of(*d);
    };
    auto created = io::test::run(ctx, log->create(dir, "j.wil"));
    REQUIRE(bool(created));
    CHECK(on_disk().empty());

    // Five writes to five regions at once: each waits, one record covers them all.
    int released = 0;
    for (std::uint64_t r : {0, 2, 3, 4, 5}) {
        REQUIRE(!log->enter(r * 4 * MiB + 4096, 8192));
        asio::co_spawn(ctx, [&, r]() -> asio::awaitable<void> {
            co_await log->wait(r * 4 * MiB + 4096, 8192);
            ++released;
        }, asio::detached);
    }
    CHECK(log->in_flight() == 5);
    io::test::run_loop(ctx);
    CHECK(released == 5);
    CHECK(log->records_written() == 1);
    CHECK(on_disk() == std::set<std::uint64_t>{0, 2, 3, 4, 5});

    // A region already durable: no wait, no record.
    CHECK(log->enter(0, 4096));
    log->leave(0, 4096);
    // A write spanning two regions, one of them new.
    REQUIRE(!log->enter(5 * 4 * MiB + 4 * MiB - 4096, 8192));   // regions 5 and 6
    io::test::run(ctx, log->wait(5 * 4 * MiB + 4 * MiB - 4096, 8192));
    CHECK(log->records_written() == 2);
    CHECK(on_disk() == std::set<std::uint64_t>{0, 2, 3, 4, 5, 6});
    log->leave(5 * 4 * MiB + 4 * MiB - 4096, 8192);

    // Regions 0, 2, 3, 4 finish; 5 stays in flight over the checkpoint's snapshot.
    for (std::uint64_t r : {0, 2, 3, 4})
        log->leave(r * 4 * MiB + 4096, 8192);
    const auto t = log->begin_checkpoint();
    CHECK(std::set<std::uint64_t>(t.candidates.begin(), t.candidates.end()) == std::set<std::uint64_t>{0, 2, 3, 4, 6});
    // After the snapshot, region 3 is written again (fast path: still marked).
    CHECK(log->enter(3 * 4 * MiB, 512));
    log->leave(3 * 4 * MiB, 512);
    log->end_checkpoint(t);
    io::test::run_loop(ctx);
    CHECK(log->records_written() == 3);
    // 5 (in flight at the snapshot) and 3 (written since) stay; the rest the checkpoint covers.
    CHECK(on_disk() == std::set<std::uint64_t>{3, 5});

    // A cleared region must be marked again before a write goes on.
    REQUIRE(!log->enter(0, 4096));
    io::test::run(ctx, log->wait(0, 4096));
    CHECK(on_disk() == std::set<std::uint64_t>{0, 3, 5});
    log->leave(0, 4096);

    // A checkpoint whose snapshot saw a write in flight keeps it even once it has finished.
    const auto t2 = log->begin_checkpoint();
    log->leave(5 * 4 * MiB + 4096, 8192);
    log->end_checkpoint(t2);
    io::test::run_loop(ctx);
    CHECK(on_disk() == std::set<std::uint64_t>{5});
    const auto t3 = log->begin_checkpoint();
    log->end_checkpoint(t3);
    io::test::run_loop(ctx);
    CHECK(on_disk().empty());
    CHECK(log->in_flight() == 0);

    // stop(): a waiting write goes on without a record.
    log->stop();
    CHECK(log->enter(9 * 4 * MiB, 4096));
    log->leave(9 * 4 * MiB, 4096);
    log.reset();
    io::test::run(ctx, engine->drain());
    std::filesystem::remove_all(dir);
}
