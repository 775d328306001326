// SPDX-License-Identifier: MIT
// NBD transmission: data commands, errors, many requests in flight, export life cycle.
#include "nbd_fixture.hpp"

#include <catch2/catch.hpp>

#include <map>

using namespace bjd;
using namespace bjd::test;

namespace {

asio::awaitable<void> write_read_roundtrip(fixture& f)
{
    client_conn c(f.mgr);
    co_await c.open("disk", false);
    bytes data = pattern(65536, 3);
    co_await c.request(nbd::cmd_write, 1, 8192, 65536, nbd::cmd_flag_fua, &data);
    auto w = co_await c.simple_reply();
    CHECK(w.error == 0);
    CHECK(w.cookie == 1);
    CHECK(f.disk->fua_writes == 1);
    co_await c.request(nbd::cmd_read, 2, 8192, 65536);
    auto r = co_await c.simple_reply();
    CHECK(r.error == 0);
    {
        auto got_ = co_await c.read(65536);
        CHECK(got_ == data);
    }
    // Errors: beyond the end (read EINVAL, write ENOSPC), unknown command, bad flags, too big.
    co_await c.request(nbd::cmd_read, 3, (1u << 20) - 512, 1024);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == nbd::err_inval);
    }
    bytes small = pattern(1024, 1);
    co_await c.request(nbd::cmd_write, 4, (1u << 20) - 512, 1024, 0, &small);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == nbd::err_nospc);
    }
    co_await c.request(99, 5, 0, 0);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == nbd::err_inval);
    }
    co_await c.request(nbd::cmd_read, 6, 0, 512, nbd::cmd_flag_req_one);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == nbd::err_inval);
    }
    co_await c.request(nbd::cmd_read, 7, 0, nbd::max_payload + 1);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == nbd::err_inval);
    }
    // An oversized WRITE: the payload is skipped, the stream stays usable.
    bytes huge(nbd::max_payload + 4096, std::byte{0x5a});
    co_await c.request(nbd::cmd_write, 8, 0, std::uint32_t(huge.size()), 0, &huge);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == nbd::err_inval);
    }
    co_await c.request(nbd::cmd_flush, 9, 0, 0);
    auto fl = co_await c.simple_reply();
    CHECK(fl.cookie == 9);
    CHECK(fl.error == 0);
    CHECK(f.disk->flushes == 1);
    // Write zeroes (NO_HOLE) and trim.
    co_await c.request(nbd::cmd_write_zeroes, 10, 8192, 4096, nbd::cmd_flag_no_hole);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == 0);
    }
    CHECK(f.disk->zero_writes == 1);
    CHECK_FALSE(f.disk->last_zero_flags.may_unmap);
    co_await c.request(nbd::cmd_trim, 11, 16384, 4096);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == 0);
    }
    CHECK(f.disk->discards == 1);
    co_await c.request(nbd::cmd_read, 12, 8192, 16384);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == 0);
    }
    bytes back = co_await c.read(16384);
    bytes expect(data.begin(), data.begin() + 16384);
    std::fill(expect.begin(), expect.begin() + 4096, std::byte{0});
    std::fill(expect.begin() + 8192, expect.begin() + 12288, std::byte{0});
    CHECK(back == expect);
    co_await c.request(nbd::cmd_disc, 13, 0, 0);
    {
        auto got_ = co_await c.at_eof();
        CHECK(got_);
    }
}

asio::awaitable<void> structured_read_and_status(fixture& f)
{
    client_conn c(f.mgr);
    co_await c.open("disk");
    bytes data = pattern(8192, 9);
    co_await c.request(nbd::cmd_write, 1, 4096, 8192, 0, &data);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == 0);
    }
    co_await c.request(nbd::cmd_read, 2, 4096, 8192, nbd::cmd_flag_df);
    auto ch = co_await c.chunk_reply();
    CHECK(ch.type == nbd::chunk_offset_data);
    CHECK(ch.flags == nbd::chunk_flag_done);
    CHECK(nbd::load_be64(ch.payload.data()) == 4096);
    CHECK(bytes(ch.payload.begin() + 8, ch.payload.end()) == data);
    // Errors come as ERROR chunks with a message.
    co_await c.request(nbd::cmd_read, 3, 1u << 20, 1);
    ch = co_await c.chunk_reply();
    CHECK(ch.type == nbd::chunk_error);
    CHECK(nbd::load_be32(ch.payload.data()) == nbd::err_inval);
    // base:allocation: hole, data (4 KiB..12 KiB), hole to the end.
    co_await c.request(nbd::cmd_block_status, 4, 0, 1u << 20);
    ch = co_await c.chunk_reply();
    REQUIRE(ch.type == nbd::chunk_block_status);
    CHECK(nbd::load_be32(ch.payload.data()) == nbd::base_allocation_id);
    std::vector<std::pair<std::uint32_t, std::uint32_t>> ext;
    for (std::size_t i = 4; i + 8 <= ch.payload.size(); i += 8)
        ext.emplace_back(nbd::load_be32(ch.payload.data() + i), nbd::load_be32(ch.payload.data() + i + 4));
    using P = std::pair<std::uint32_t, std::uint32_t>;
    CHECK(ext == std::vector<P>{{4096, nbd::state_hole | nbd::state_zero}, {8192, 0},
                                {(1u << 20) - 12288, nbd::state_hole | nbd::state_zero}});
    co_await c.request(nbd::cmd_block_status, 5, 0, 1u << 20, nbd::cmd_flag_req_one);
    ch = co_await c.chunk_reply();
    CHECK(ch.payload.size() == 12);
}

asio::awaitable<void> sparse_read_and_cache(fixture& f)
{
    client_conn c(f.mgr);
    co_await c.open("disk");
    bytes data = pattern(8192, 5);
    co_await c.request(nbd::cmd_write, 1, 4096, 8192, 0, &data);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == 0);
    }
    // Without DF: hole 0..4 KiB, data 4..12 KiB, hole 12..20 KiB (DONE on the last chunk only).
    co_await c.request(nbd::cmd_read, 2, 0, 20480);
    auto ch = co_await c.chunk_reply();
    CHECK(ch.type == nbd::chunk_offset_hole);
    CHECK(ch.flags == 0);
    CHECK(ch.cookie == 2);
    REQUIRE(ch.payload.size() == 12);
    CHECK(nbd::load_be64(ch.payload.data()) == 0);
    CHECK(nbd::load_be32(ch.payload.data() + 8) == 4096);
    ch = co_await c.chunk_reply();
    CHECK(ch.type == nbd::chunk_offset_data);
    CHECK(ch.flags == 0);
    REQUIRE(ch.payload.size() == 8 + 8192);
    CHECK(nbd::load_be64(ch.payload.data()) == 4096);
    CHECK(bytes(ch.payload.begin() + 8, ch.payload.end()) == data);
    ch = co_await c.chunk_reply();
    CHECK(ch.type == nbd::chunk_offset_hole);
    CHECK(ch.flags == nbd::chunk_flag_done);
    REQUIRE(ch.payload.size() == 12);
    CHECK(nbd::load_be64(ch.payload.data()) == 12288);
    CHECK(nbd::load_be32(ch.payload.data() + 8) == 8192);
    // All data: one OFFSET_DATA chunk with DONE, as with DF.
    co_await c.request(nbd::cmd_read, 3, 4096, 8192);
    ch = co_await c.chunk_reply();
    CHECK(ch.type == nbd::chunk_offset_data);
    CHECK(ch.flags == nbd::chunk_flag_done);
    CHECK(bytes(ch.payload.begin() + 8, ch.payload.end()) == data);
    // A READ with FUA flushes first (as QEMU does).
    unsigned flushes = f.disk->flushes;
    co_await c.request(nbd::cmd_read, 4, 0, 4096, nbd::cmd_flag_fua);
    ch = co_await c.chunk_reply();
    CHECK(ch.type == nbd::chunk_offset_hole);
    CHECK(ch.flags == nbd::chunk_flag_done);
    CHECK(f.disk->flushes == flushes + 1);
    // CACHE: succeeds in range, EINVAL past the end or with a flag it does not take.
    co_await c.request(nbd::cmd_cache, 5, 0, 1u << 20);
    {
        auto got_ = co_await c.simple_reply();   // success: a simple reply, as QEMU sends
        CHECK(got_.error == 0);
        CHECK(got_.cookie == 5);
    }
    co_await c.request(nbd::cmd_cache, 6, 1u << 20, 4096);
    ch = co_await c.chunk_reply();
    CHECK(ch.type == nbd::chunk_error);
    CHECK(nbd::load_be32(ch.payload.data()) == nbd::err_inval);
    co_await c.request(nbd::cmd_cache, 7, 0, 4096, nbd::cmd_flag_df);
    ch = co_await c.chunk_reply();
    CHECK(ch.type == nbd::chunk_error);
    CHECK(nbd::load_be32(ch.payload.data()) == nbd::err_inval);
}

asio::awaitable<void> many_in_flight(fixture& f, unsigned n)
{
    client_conn c(f.mgr);
    co_await c.open("disk", false);
    // Send everything before reading any reply: the server must keep reading while requests
    // run, and answer each cookie exactly once.
    bytes all;
    std::map<std::uint64_t, bytes> written;
    for (unsigned i = 0; i < n; ++i) {
        bytes d = pattern(4096, i);
        nbd::encode_request(all, {0, nbd::cmd_write, 1000 + i, std::uint64_t(i % 256) * 4096, 4096});
        all.insert(all.end(), d.begin(), d.end());
        written[i % 256] = d;
    }
    co_await c.write(all);
    std::map<std::uint64_t, int> seen;
    for (unsigned i = 0; i < n; ++i) {
        auto r = co_await c.simple_reply();
        CHECK(r.error == 0);
        seen[r.cookie]++;
    }
    CHECK(seen.size() == n);
    for (auto& [blk, d] : written)
        CHECK(std::equal(d.begin(), d.end(), f.disk->data_.begin() + blk * 4096));
}

asio::awaitable<void> pipelined_mixed(fixture& f)
{
    // Requests arrive in batches (one socket read brings many): headers and payloads of every
    // size must be cut apart exactly, whether a payload sits in the batch, straddles its end,
    // or is larger than the batch and read straight from the socket.
    client_conn c(f.mgr);
    co_await c.open("disk", false);
    const std::uint32_t sizes[] = {4096, 12288, 100 * 1024, 512, 16384, 70 * 1024, 1024};
    bytes all;
    std::vector<std::pair<std::uint64_t, bytes>> written;
    std::uint64_t off = 0;
    for (unsigned i = 0; i < 21; ++i) {
        const std::uint32_t len = sizes[i % std::size(sizes)];
        bytes d = pattern(len, 40 + i);
        nbd::encode_request(all, {0, nbd::cmd_write, 500 + i, off, len});
        all.insert(all.end(), d.begin(), d.end());
        written.emplace_back(off, std::move(d));
        off += len;
        // A zero-length request between payloads, as a header alone.
        if (i % 5 == 4)
            nbd::encode_request(all, {0, nbd::cmd_flush, 900 + i, 0, 0});
    }
    REQUIRE(off <= (1u << 20));
    co_await c.write(all);
    std::map<std::uint64_t, int> seen;
    for (unsigned i = 0; i < 21 + 4; ++i) {
        auto r = co_await c.simple_reply();
        CHECK(r.error == 0);
        seen[r.cookie]++;
    }
    CHECK(seen.size() == 25);
    for (auto& [o, d] : written)
        CHECK(std::equal(d.begin(), d.end(), f.disk->data_.begin() + std::ptrdiff_t(o)));
}

asio::awaitable<void> read_only_export(fixture& f)
{
    client_conn c(f.mgr);
    co_await c.open("disk", false);
    bytes d = pattern(512, 1);
    co_await c.request(nbd::cmd_write, 1, 0, 512, 0, &d);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == nbd::err_perm);
    }
    co_await c.request(nbd::cmd_write_zeroes, 2, 0, 512);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == nbd::err_perm);
    }
    co_await c.request(nbd::cmd_read, 3, 0, 512);
    {
        auto got_ = co_await c.simple_reply();
        CHECK(got_.error == 0);
    }
    (void)co_await c.read(512);
    CHECK(f.disk->writes == 0);
}

asio::awaitable<void> vanish_mid_payload(fixture& f)
{
    {
        client_conn c(f.mgr);
        co_await c.open("disk", false);
        bytes d = pattern(4096, 2);
        co_await c.request(nbd::cmd_write, 1, 0, 4096, 0, &d);   // complete write: must land
        bytes partial;
        nbd::encode_request(partial, {0, nbd::cmd_write, 2, 8192, 65536});
        partial.resize(partial.size() + 100);
        co_await c.write(partial);
    }   // client closes its socket here
}

/// Five WRITEs held at the node: while they are, the manager counts them as being carried out
/// (what --poll-queued counts); then the client reads the replies, or hangs up first.
asio::awaitable<void> held_writes(fixture& f, bool hang_up)
{
    asio::steady_timer hold(f.io, asio::steady_timer::time_point::max());
    f.disk->hold = &hold;
    client_conn c(f.mgr);
    co_await c.open("disk", false);
    CHECK(f.mgr.requests_executing() == 0);
    bytes d = pattern(4096, 4);
    for (std::uint64_t i = 0; i < 5; ++i)
        co_await c.request(nbd::cmd_write, i, i * 4096, 4096, 0, &d);
    asio::steady_timer tick(f.io);
    for (int i = 0; i < 2000 && f.mgr.requests_executing() < 5; ++i) {
        tick.expires_after(std::chrono::milliseconds(1));
        co_await tick.async_wait(asio::use_awaitable);
    }
    CHECK(f.mgr.requests_executing() == 5);
    if (hang_up)
        c.sock.close();
    f.disk->hold = nullptr;
    hold.cancel();
    if (!hang_up)
        for (int i = 0; i < 5; ++i) {
            auto r = co_await c.simple_reply();
            CHECK(r.error == 0);
        }
}

asio::awaitable<void> open_and_hold(fixture& f, client_conn& c)
{
    co_await c.open("disk", false);
}

asio::awaitable<bool> read_byte_after_pivot(fixture& f, client_conn& c)
{
    co_await c.request(nbd::cmd_read, 1, 0, 1);
    auto r = co_await c.simple_reply();
    bytes b = co_await c.read(1);
    co_return r.error == 0 && b[0] == std::byte{0xab};
}

using extents = std::vector<std::pair<std::uint32_t, std::uint32_t>>;

extents chunk_extents(const client_conn::chunk& ch)
{
    extents ext;
    for (std::size_t i = 4; i + 8 <= ch.payload.size(); i += 8)
        ext.emplace_back(nbd::load_be32(ch.payload.data() + i), nbd::load_be32(ch.payload.data() + i + 4));
    return ext;
}

/// Meta context replies to a LIST or SET of `queries` on export `name`: (id, context name).
asio::awaitable<std::vector<std::pair<std::uint32_t, std::string>>> meta_contexts(client_conn& c, std::uint32_t option,
                                                                                   std::string_view name,
                                                                                   std::vector<std::string> queries)
{
    bytes d;
    nbd::writer w(d);
    w.u32(std::uint32_t(name.size())).bytes(name).u32(std::uint32_t(queries.size()));
    for (const auto& q : queries)
        w.u32(std::uint32_t(q.size())).bytes(q);
    co_await c.option(option, d);
    std::vector<std::pair<std::uint32_t, std::string>> out;
    for (;;) {
        auto r = co_await c.option_reply();
        if (r.type != nbd::rep_meta_context)
            break;
        std::string ctx;
        for (std::size_t i = 4; i < r.data.size(); ++i)
            ctx.push_back(char(r.data[i]));
        out.emplace_back(nbd::load_be32(r.data.data()), ctx);
    }
    co_return out;
}

asio::awaitable<void> dirty_bitmap_status(fixture& f)
{
    client_conn c(f.mgr);
    co_await c.greet();
    co_await c.option(nbd::opt_structured_reply, {});
    (void)co_await c.option_reply();
    using ctxs = std::vector<std::pair<std::uint32_t, std::string>>;
    // LIST: "qemu:" means every bitmap, in the export's order; unknown names select nothing.
    std::vector<std::string> q_all{std::string("qemu:")};
    std::vector<std::string> q_unknown{std::string("qemu:dirty-bitmap:zz")};
    std::vector<std::string> q_set{std::string("qemu:dirty-bitmap:b"), std::string(nbd::base_allocation)};
    const ctxs want_all{{2, std::string("qemu:dirty-bitmap:b")}, {3, std::string("qemu:dirty-bitmap:c")}};
    const ctxs want_set{{nbd::base_allocation_id, std::string(nbd::base_allocation)},
                        {2, std::string("qemu:dirty-bitmap:b")}};
    auto listed = co_await meta_contexts(c, nbd::opt_list_meta_context, "bm", q_all);
    CHECK(listed == want_all);
    auto none = co_await meta_contexts(c, nbd::opt_list_meta_context, "bm", q_unknown);
    CHECK(none.empty());
    // SET: base:allocation and b (c not asked for), in that order whatever the query order.
    auto set = co_await meta_contexts(c, nbd::opt_set_meta_context, "bm", q_set);
    CHECK(set == want_set);
    co_await c.option(nbd::opt_go, client_conn::go_data("bm"));
    while ((co_await c.option_reply()).type != nbd::rep_ack) {}

    bytes data = pattern(100, 3);
    co_await c.request(nbd::cmd_write, 1, 4196, 100, 0, &data);   // chunk 1 (4 KiB chunks)
    auto wrote = co_await c.simple_reply();
    CHECK(wrote.error == 0);

    co_await c.request(nbd::cmd_block_status, 2, 0, 1u << 20);
    auto ch = co_await c.chunk_reply();
    REQUIRE(ch.type == nbd::chunk_block_status);
    CHECK(ch.flags == 0);   // not the last chunk
    CHECK(nbd::load_be32(ch.payload.data()) == nbd::base_allocation_id);
    ch = co_await c.chunk_reply();
    REQUIRE(ch.type == nbd::chunk_block_status);
    CHECK(ch.flags == nbd::chunk_flag_done);
    CHECK(nbd::load_be32(ch.payload.data()) == 2);
    const extents want_full{{4096, 0}, {4096, nbd::state_dirty}, {(1u << 20) - 8192, 0}};
    CHECK(chunk_extents(ch) == want_full);

    // REQ_ONE: one extent per context, the first run only.
    co_await c.request(nbd::cmd_block_status, 3, 0, 1u << 20, nbd::cmd_flag_req_one);
    (void)co_await c.chunk_reply();
    ch = co_await c.chunk_reply();
    const extents want_one{{4096, 0}};
    CHECK(chunk_extents(ch) == want_one);
    // A range starting inside the dirty run is cut to it.
    co_await c.request(nbd::cmd_block_status, 4, 6000, 10000);
    (void)co_await c.chunk_reply();
    ch = co_await c.chunk_reply();
    const extents want_cut{{2192, nbd::state_dirty}, {7808, 0}};
    CHECK(chunk_extents(ch) == want_cut);
}

} // namespace

TEST_CASE("export: simple replies for data commands and errors", "[export]")
{
    fixture f;
    run(f.io, write_read_roundtrip(f));
}

TEST_CASE("export: structured READ and base:allocation BLOCK_STATUS", "[export]")
{
    fixture f;
    run(f.io, structured_read_and_status(f));
}

TEST_CASE("export: structured READ without DF sends holes; CACHE", "[export]")
{
    fixture f;
    run(f.io, sparse_read_and_cache(f));
}

TEST_CASE("export: pipelined WRITEs of mixed sizes are cut apart exactly", "[export]")
{
    fixture f;
    run(f.io, pipelined_mixed(f));
}

TEST_CASE("export: many requests in flight on one connection", "[export]")
{
    fixture f;
    SECTION("within the limits") { run(f.io, many_in_flight(f, 200)); }
    SECTION("with tight limits the server applies back-pressure") {
        f.mgr.set_limits({.max_in_flight = 2, .max_buffered_bytes = 8192});
        run(f.io, many_in_flight(f, 200));
    }
}

TEST_CASE("export: requests being carried out are counted until their replies", "[export]")
{
    fixture f;
    const bool hang_up = GENERATE(false, true);
    INFO("client hangs up first: " << hang_up);
    run(f.io, held_writes(f, hang_up));
    settle(f.io);
    CHECK(f.disk->writes == 5);
    CHECK(f.mgr.requests_executing() == 0);
}

TEST_CASE("export: read-only export refuses writes with EPERM", "[export]")
{
    fixture f(false);
    run(f.io, read_only_export(f));
}

TEST_CASE("export: client vanishing mid-payload keeps completed writes", "[export]")
{
    fixture f;
    run(f.io, vanish_mid_payload(f));
    settle(f.io);
    CHECK(f.disk->writes == 1);
    CHECK(std::equal(f.disk->data_.begin(), f.disk->data_.begin() + 4096, pattern(4096, 2).begin()));
    CHECK(f.mgr.find_by_id("e0")->clients() == 0);
}

TEST_CASE("export: block-export-del modes and BLOCK_EXPORT_DELETED", "[export]")
{
    fixture f;
    client_conn c(f.mgr);
    run(f.io, open_and_hold(f, c));
    settle(f.io);
    auto r = f.mgr.del("e0", false);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().desc == "export 'e0' still in use");
    CHECK(f.mgr.del("zz", false).error().desc == "Export 'zz' is not found");
    REQUIRE(f.mgr.del("e0", true).has_value());
    auto q = f.mgr.query();
    REQUIRE(q.size() == 1);
    CHECK(q[0].shutting_down);
    CHECK(f.mgr.del("e0", true).error().desc == "Export 'e0' is already shutting down");
    CHECK(f.deleted.empty());   // the client still has to go
    settle(f.io);
    CHECK(f.deleted == std::vector<std::string>{"e0"});
    CHECK(f.mgr.query().empty());
    CHECK(f.disk->parents().empty());
}

TEST_CASE("export: a client that has hung up does not keep a safe delete out", "[export]")
{
    // qemu-img exits and the orchestrator deletes the export at once: the server may not have
    // read the client's EOF yet, but the client is gone, so mode=safe must not refuse.
    fixture f;
    client_conn c(f.mgr);
    run(f.io, open_and_hold(f, c));
    settle(f.io);
    REQUIRE(f.mgr.find_by_id("e0")->clients() == 1);
    c.sock.close();   // the server's read loop has not run since
    REQUIRE(f.mgr.find_by_id("e0")->clients() == 1);
    REQUIRE(f.mgr.del("e0", false).has_value());
    CHECK(f.deleted.empty());   // finishes once the connection has noticed and detached
    settle(f.io);
    CHECK(f.deleted == std::vector<std::string>{"e0"});
}

TEST_CASE("export: block-export-del answers after the deletion when the clients hung up", "[export]")
{
    // The QMP commands' remove(): BLOCK_EXPORT_DELETED precedes the answer, as in QEMU for an
    // export without clients.
    fixture f;
    client_conn c(f.mgr);
    run(f.io, open_and_hold(f, c));
    settle(f.io);
    c.sock.close();
    auto r = run(f.io, f.mgr.remove("e0", false));
    REQUIRE(r.has_value());
    CHECK(f.deleted == std::vector<std::string>{"e0"});
    CHECK(f.mgr.query().empty());
}

TEST_CASE("export: add errors use qemu-storage-daemon's texts", "[export]")
{
    fixture f;
    exports::export_options o;
    o.id = "e0";
    o.node_name = "disk";
    CHECK(f.mgr.add(o, f.disk).error().desc == "Block export id 'e0' is already in use");
    o.id = "1x";
    CHECK(f.mgr.add(o, f.disk).error().desc == "Invalid block export id");
    o.id = "e1";
    CHECK(f.mgr.add(o, f.disk).error().desc == "NBD server already has export named 'disk'");
    CHECK(f.mgr.start_server({}).error().desc == "NBD server already running");
    REQUIRE(f.mgr.stop_server().has_value());
    CHECK(f.deleted == std::vector<std::string>{"e0"});
    CHECK(f.mgr.stop_server().error().desc == "NBD server not running");
    o.name = "x";
    CHECK(f.mgr.add(o, f.disk).error().desc == "NBD server not running");
    exports::nbd_server_options tls;
    tls.addr.path = f.sock_path;
    tls.tls_creds = "tls0";
    CHECK(f.mgr.start_server(tls).error().desc == "No TLS credentials with id 'tls0'");
    crypto::registry objects;
    f.mgr.set_objects(objects);
    CHECK(f.mgr.start_server(tls).error().desc == "No TLS credentials with id 'tls0'");
    tls.tls_creds.reset();
    tls.tls_authz = "az";
    CHECK(f.mgr.start_server(tls).error().desc == "'tls-authz' is only supported with 'tls-creds'");
    CHECK_FALSE(f.mgr.server_running());
}

TEST_CASE("export: a pivot redirects the export to the new node", "[export]")
{
    fixture f;
    client_conn c(f.mgr);
    run(f.io, open_and_hold(f, c));
    auto target = std::make_shared<mem_node>("target", 1u << 20);
    target->data_[0] = std::byte{0xab};
    block::replace_node(*f.disk, target);
    CHECK(f.mgr.query()[0].node_name == "target");
    CHECK(run(f.io, read_byte_after_pivot(f, c)));
}

TEST_CASE("export: qemu:dirty-bitmap contexts and their BLOCK_STATUS", "[export]")
{
    fixture f;
    auto b = f.disk->add_bitmap("b", 4096);
    auto c = f.disk->add_bitmap("c", 65536);
    exports::export_options e;
    e.id = "e1";
    e.name = "bm";
    e.node_name = "disk";
    e.writable = true;
    e.bitmaps.emplace_back().name = "b";
    e.bitmaps.emplace_back().name = "c";
    REQUIRE(f.mgr.add(e, f.disk).has_value());
    CHECK(b->busy());
    CHECK(c->busy());
    run(f.io, dirty_bitmap_status(f));
    CHECK(b->bits().count() == 4096);
    REQUIRE(f.mgr.del("e1", true).has_value());
    settle(f.io);
    CHECK(f.deleted == std::vector<std::string>{"e1"});
    CHECK_FALSE(b->busy());
    CHECK_FALSE(c->busy());
}
