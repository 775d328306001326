// SPDX-License-Identifier: MIT
// NBD handshake: greeting, option haggling, error replies, malformed input.
#include "nbd_fixture.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/steady_timer.hpp>

using namespace bjd;
using namespace bjd::test;

namespace {

asio::awaitable<bool> greeting_is_fixed_newstyle(fixture& f)
{
    client_conn c(f.mgr);
    bytes g = co_await c.greet();
    co_return nbd::load_be64(g.data()) == nbd::init_magic && nbd::load_be64(g.data() + 8) == nbd::opts_magic &&
        nbd::load_be16(g.data() + 16) == (nbd::flag_fixed_newstyle | nbd::flag_no_zeroes);
}

asio::awaitable<std::vector<std::string>> list_exports(fixture& f)
{
    client_conn c(f.mgr);
    co_await c.greet();
    co_await c.option(nbd::opt_list, {});
    std::vector<std::string> names;
    for (;;) {
        auto r = co_await c.option_reply();
        if (r.type == nbd::rep_ack)
            break;
        REQUIRE(r.type == nbd::rep_server);
        std::uint32_t len = nbd::load_be32(r.data.data());
        names.emplace_back(reinterpret_cast<const char*>(r.data.data() + 4), len);
        names.back() += "|" + std::string(reinterpret_cast<const char*>(r.data.data() + 4 + len), r.data.size() - 4 - len);
    }
    co_return names;
}

asio::awaitable<void> info_then_go(fixture& f)
{
    client_conn c(f.mgr);
    co_await c.greet();
    // Unknown export: NBD_REP_ERR_UNKNOWN, and haggling continues.
    co_await c.option(nbd::opt_info, client_conn::go_data("nope"));
    auto r = co_await c.option_reply();
    CHECK(r.type == nbd::rep_err_unknown);
    // Unknown option: NBD_REP_ERR_UNSUP.
    co_await c.option(42, {});
    r = co_await c.option_reply();
    CHECK(r.option == 42);
    CHECK(r.type == nbd::rep_err_unsup);
    // TLS is refused.
    co_await c.option(nbd::opt_starttls, {});
    {
        auto got_ = co_await c.option_reply();
        CHECK(got_.type == nbd::rep_err_policy);
    }
    // INFO with name, description and block size.
    std::vector<std::uint16_t> infos{nbd::info_name, nbd::info_description, nbd::info_block_size};
    bytes info_req = client_conn::go_data("disk", infos);
    co_await c.option(nbd::opt_info, info_req);
    bool saw_export = false, saw_name = false, saw_desc = false, saw_bs = false;
    for (;;) {
        r = co_await c.option_reply();
        if (r.type == nbd::rep_ack)
            break;
        REQUIRE(r.type == nbd::rep_info);
        switch (nbd::load_be16(r.data.data())) {
        case nbd::info_export:
            saw_export = true;
            CHECK(nbd::load_be64(r.data.data() + 2) == (1u << 20));
            CHECK((nbd::load_be16(r.data.data() + 10) & nbd::tflag_read_only) == 0);
            CHECK((nbd::load_be16(r.data.data() + 10) & nbd::tflag_send_write_zeroes) != 0);
            CHECK((nbd::load_be16(r.data.data() + 10) & nbd::tflag_send_cache) != 0);
            break;
        case nbd::info_name:
            saw_name = std::string(reinterpret_cast<const char*>(r.data.data() + 2), r.data.size() - 2) == "disk";
            break;
        case nbd::info_description:
            saw_desc = std::string(reinterpret_cast<const char*>(r.data.data() + 2), r.data.size() - 2) == "test disk";
            break;
        case nbd::info_block_size:
            saw_bs = nbd::load_be32(r.data.data() + 10) == nbd::max_payload;
            break;
        }
    }
    CHECK(saw_export);
    CHECK(saw_name);
    CHECK(saw_desc);
    CHECK(saw_bs);
    // Malformed GO (name length past the end): NBD_REP_ERR_INVALID.
    bytes bad;
    nbd::writer(bad).u32(100).bytes("ab");
    co_await c.option(nbd::opt_go, bad);
    {
        auto got_ = co_await c.option_reply();
        CHECK(got_.type == nbd::rep_err_invalid);
    }
    // SET_META_CONTEXT before STRUCTURED_REPLY is invalid.
    bytes meta;
    nbd::writer(meta).u32(4).bytes("disk").u32(1).u32(15).bytes("base:allocation");
    co_await c.option(nbd::opt_set_meta_context, meta);
    {
        auto got_ = co_await c.option_reply();
        CHECK(got_.type == nbd::rep_err_invalid);
    }
    // LIST_META_CONTEXT with no query lists base:allocation.
    bytes listq;
    nbd::writer(listq).u32(4).bytes("disk").u32(0);
    co_await c.option(nbd::opt_list_meta_context, listq);
    r = co_await c.option_reply();
    CHECK(r.type == nbd::rep_meta_context);
    CHECK(nbd::load_be32(r.data.data()) == nbd::base_allocation_id);
    {
        auto got_ = co_await c.option_reply();
        CHECK(got_.type == nbd::rep_ack);
    }
    // Finally GO works after all of that, and the export answers a FLUSH.
    co_await c.option(nbd::opt_go, client_conn::go_data("disk"));
    while ((co_await c.option_reply()).type != nbd::rep_ack) {}
    co_await c.request(nbd::cmd_flush, 7, 0, 0);
    auto s = co_await c.simple_reply();
    CHECK(s.cookie == 7);
    CHECK(s.error == 0);
}

asio::awaitable<bool> export_name_without_no_zeroes(fixture& f)
{
    client_conn c(f.mgr);
    co_await c.greet(nbd::flag_c_fixed_newstyle);
    bytes name;
    nbd::writer(name).bytes("disk");
    co_await c.option(nbd::opt_export_name, name);
    bytes r = co_await c.read(8 + 2 + 124);
    bool ok = nbd::load_be64(r.data()) == (1u << 20) && (nbd::load_be16(r.data() + 8) & nbd::tflag_has_flags);
    co_await c.request(nbd::cmd_disc, 1, 0, 0);
    co_return ok && co_await c.at_eof();
}

asio::awaitable<bool> bad_input_disconnects(fixture& f, int which)
{
    client_conn c(f.mgr);
    if (which == 0) {          // unknown client flags
        co_await c.greet(0x80);
    } else if (which == 1) {   // wrong option magic
        co_await c.greet();
        bytes b;
        nbd::writer(b).u64(0x1234).u32(nbd::opt_go).u32(0);
        co_await c.write(b);
    } else if (which == 2) {   // absurd option length
        co_await c.greet();
        bytes b;
        nbd::writer(b).u64(nbd::opts_magic).u32(nbd::opt_go).u32(0xfffffff0u);
        co_await c.write(b);
    } else if (which == 3) {   // EXPORT_NAME of an unknown export
        co_await c.greet();
        bytes n;
        nbd::writer(n).bytes("nope");
        co_await c.option(nbd::opt_export_name, n);
    } else {                   // ABORT: acknowledged, then closed
        co_await c.greet();
        co_await c.option(nbd::opt_abort, {});
        auto r = co_await c.option_reply();
        REQUIRE(r.type == nbd::rep_ack);
    }
    co_return co_await c.at_eof();
}

} // namespace

TEST_CASE("export: greeting is fixed newstyle with NO_ZEROES", "[export]")
{
    fixture f;
    CHECK(run(f.io, greeting_is_fixed_newstyle(f)));
}

TEST_CASE("export: NBD_OPT_LIST lists exports with descriptions", "[export]")
{
    fixture f;
    auto n2 = std::make_shared<mem_node>("other", 4096);
    exports::export_options o;
    o.id = "e1";
    o.node_name = "other";
    REQUIRE(f.mgr.add(o, n2).has_value());
    auto names = run(f.io, list_exports(f));
    CHECK(names == std::vector<std::string>{"disk|test disk", "other|"});
}

TEST_CASE("export: option haggling answers errors and continues", "[export]")
{
    fixture f;
    run(f.io, info_then_go(f));
}

TEST_CASE("export: NBD_OPT_EXPORT_NAME enters transmission with padding", "[export]")
{
    fixture f;
    CHECK(run(f.io, export_name_without_no_zeroes(f)));
}

TEST_CASE("export: malformed handshakes disconnect cleanly", "[export]")
{
    fixture f;
    for (int which = 0; which < 5; ++which) {
        INFO("case " << which);
        CHECK(run(f.io, bad_input_disconnects(f, which)));
    }
    settle(f.io);
    CHECK(f.mgr.find_by_id("e0")->clients() == 0);
}

namespace {

/// With max-connections=1 a second client is not refused but not served either (QEMU stops
/// accepting): it gets its greeting only once the first client has gone.
asio::awaitable<bool> second_client_waits(asio::io_context& io, std::string path)
{
    using local = asio::local::stream_protocol;
    auto tok = asio::as_tuple(asio::use_awaitable);
    local::socket a(io), b(io);
    co_await a.async_connect(local::endpoint(path), asio::use_awaitable);
    bytes ga(18);
    co_await asio::async_read(a, asio::buffer(ga), asio::use_awaitable);
    co_await b.async_connect(local::endpoint(path), asio::use_awaitable);   // lands in the backlog
    bytes gb(18);
    bool b_done = false;
    boost::system::error_code b_ec;
    asio::steady_timer b_read(io, asio::steady_timer::time_point::max());
    asio::async_read(b, asio::buffer(gb), [&](boost::system::error_code ec, std::size_t) {
        b_ec = ec;
        b_done = true;
        b_read.cancel();
    });
    // The first client finishes option haggling round trips while the second one waits.
    for (int i = 0; i < 20; ++i) {
        bytes flags;
        if (i == 0) {
            nbd::writer(flags).u32(nbd::flag_c_fixed_newstyle | nbd::flag_c_no_zeroes);
            co_await asio::async_write(a, asio::buffer(flags), asio::use_awaitable);
        }
        bytes opt;
        nbd::writer(opt).u64(nbd::opts_magic).u32(nbd::opt_list).u32(0);
        co_await asio::async_write(a, asio::buffer(opt), asio::use_awaitable);
        bytes rep(20);
        co_await asio::async_read(a, asio::buffer(rep), asio::use_awaitable);   // REP_ACK (no exports)
        if (nbd::load_be32(rep.data() + 12) != nbd::rep_ack)
            co_return false;
    }
    bool waited = !b_done;
    a.close();
    if (!b_done)
        co_await b_read.async_wait(tok);   // no timeout: the test runner bounds a hang
    co_return nbd::load_be64(ga.data()) == nbd::init_magic && waited && !b_ec &&
        nbd::load_be64(gb.data()) == nbd::init_magic;
}

} // namespace

TEST_CASE("export: max-connections makes further clients wait for a free slot", "[export]")
{
    asio::io_context io;
    exports::manager m(io, [](const std::string&) {});
    exports::nbd_server_options o;
    o.addr.path = (std::filesystem::temp_directory_path() / ("bjd-nbd-max-" + std::to_string(::getpid()) + ".sock")).string();
    o.max_connections = 1;
    REQUIRE(m.start_server(o).has_value());
    CHECK(m.server_address() == "unix:" + o.addr.path);
    CHECK(run(io, second_client_waits(io, o.addr.path)));
    run(io, m.shutdown());
}
