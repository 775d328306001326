// SPDX-License-Identifier: MIT
// NBD server TLS: plaintext options refused before NBD_OPT_STARTTLS, the upgrade with our own
// client session (x509 and PSK), requests over TLS, tls-authz.
#include "nbd_fixture.hpp"

#include "crypto/tls_fixture.hpp"

#include "bjd/qapi/types.hpp"

#include <catch2/catch.hpp>

#include <boost/json/parse.hpp>

using namespace bjd;
using namespace bjd::test;

namespace {

void add_object(crypto::registry& r, std::string json)
{
    auto o = qapi::decode<qapi::object_options>(boost::json::parse(json));
    REQUIRE(o.has_value());
    auto a = r.add(*o);
    INFO((a ? "" : a.error().desc));
    REQUIRE(a.has_value());
}

struct tls_fixture {
    asio::io_context io;
    crypto::registry objects;
    exports::manager mgr{io, [](const std::string&) {}};
    std::string sock_path =
        (std::filesystem::temp_directory_path() / ("bjd-nbd-tls-" + std::to_string(::getpid()) + ".sock")).string();
    std::shared_ptr<mem_node> disk = std::make_shared<mem_node>("disk", 1u << 20);
    int starts = 0;

    tls_fixture()
    {
        const std::string d = tls_dir();
        add_object(objects, R"({"qom-type":"tls-creds-x509","id":"tls0","endpoint":"server","dir":")" + d + R"(/server"})");
        add_object(objects, R"({"qom-type":"tls-creds-x509","id":"tlsc","endpoint":"client","dir":")" + d + R"(/client"})");
        add_object(objects, R"({"qom-type":"tls-creds-psk","id":"psk0","endpoint":"server","dir":")" + d + R"(/psk"})");
        add_object(objects, R"({"qom-type":"tls-creds-psk","id":"pskc","endpoint":"client","username":"alice","dir":")" +
                                d + R"(/psk"})");
        add_object(objects, R"({"qom-type":"authz-simple","id":"me","identity":"O=blockjobd tests,CN=client"})");
        add_object(objects, R"({"qom-type":"authz-simple","id":"other","identity":"O=blockjobd tests,CN=other"})");
        mgr.set_objects(objects);
        auto p = pattern(disk->data_.size(), 3);
        std::copy(p.begin(), p.end(), disk->data_.begin());
    }
    ~tls_fixture() { run(io, mgr.shutdown()); }

    void start(std::string creds, std::optional<std::string> authz = std::nullopt)
    {
        if (mgr.server_running()) {
            REQUIRE(mgr.stop_server().has_value());
            settle(io);
        }
        exports::nbd_server_options o;
        o.addr.path = sock_path;
        o.tls_creds = std::move(creds);
        o.tls_authz = std::move(authz);
        auto r = mgr.start_server(o);
        INFO((r ? "" : r.error().desc));
        REQUIRE(r.has_value());
        exports::export_options e;
        e.id = "e" + std::to_string(starts++);
        e.node_name = "disk";
        e.name = "disk";
        REQUIRE(mgr.add(e, disk).has_value());
    }
    std::shared_ptr<crypto::tls_creds> client(const char* id)
    {
        return objects.tls_creds_for(id, crypto::endpoint::client).value();
    }
};

std::string text(const bytes& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

/// Greets, upgrades with the client credentials `creds`, and tells whether the server then
/// hung up (its refusal after the handshake, as for a tls-authz mismatch).
asio::awaitable<bool> hung_up_after_tls(tls_fixture& f, const char* creds)
{
    client_conn c(f.mgr);
    co_await c.greet();
    co_await c.starttls(f.client(creds));
    co_return co_await c.at_eof();
}

/// GO, then one 64 KiB READ with a simple reply: true when the data is the disk's.
asio::awaitable<bool> go_and_read(client_conn& c, const mem_node& disk)
{
    co_await c.option(nbd::opt_go, client_conn::go_data("disk"));
    for (;;) {
        auto r = co_await c.option_reply();
        if (r.type == nbd::rep_ack)
            break;
        if (r.type & 0x80000000u)
            co_return false;
    }
    co_await c.request(nbd::cmd_read, 7, 4096, 65536);
    auto rep = co_await c.simple_reply();
    bytes data = co_await c.read(65536);
    co_return rep.error == 0 && rep.cookie == 7 &&
        std::equal(data.begin(), data.end(), disk.data_.begin() + 4096);
}

} // namespace

TEST_CASE("NBD TLS: plaintext options are refused before STARTTLS", "[export][tls]")
{
    tls_fixture f;
    f.start("tls0");
    run(f.io, [&]() -> asio::awaitable<void> {
        client_conn c(f.mgr);
        co_await c.greet();
        const std::uint32_t opts[] = {nbd::opt_go, nbd::opt_list, nbd::opt_structured_reply, 99u};
        for (std::uint32_t opt : opts) {
            bytes data;
            if (opt == nbd::opt_go)
                data = client_conn::go_data("disk");
            co_await c.option(opt, data);
            auto r = co_await c.option_reply();
            CHECK(r.option == opt);
            CHECK(r.type == nbd::rep_err_tls_reqd);
            char want[64];
            std::snprintf(want, sizeof want, "Option 0x%x not permitted before TLS", opt);
            CHECK(text(r.data) == want);
        }
        // EXPORT_NAME cannot be refused with an error: the connection ends.
        co_await c.option(nbd::opt_export_name, bytes{});
        bool eof = co_await c.at_eof();
        CHECK(eof);

        client_conn a(f.mgr);
        co_await a.greet();
        co_await a.option(nbd::opt_abort, {});
        auto ra = co_await a.option_reply();
        CHECK(ra.type == nbd::rep_err_tls_reqd);
        bool eof2 = co_await a.at_eof();
        CHECK(eof2);
    }());
}

TEST_CASE("NBD TLS: x509 and PSK upgrades serve the export", "[export][tls]")
{
    tls_fixture f;
    SECTION("x509, tls-authz admitting the client")
    {
        f.start("tls0", "me");
        run(f.io, [&]() -> asio::awaitable<void> {
            client_conn c(f.mgr);
            co_await c.greet();
            std::string err = co_await c.starttls(f.client("tlsc"));
            CHECK(err.empty());
            // A second STARTTLS: QEMU's "TLS already enabled".
            co_await c.option(nbd::opt_starttls, {});
            auto r = co_await c.option_reply();
            CHECK(r.type == nbd::rep_err_invalid);
            CHECK(text(r.data) == "TLS already enabled");
            bool ok = co_await go_and_read(c, *f.disk);
            CHECK(ok);
        }());
    }
    SECTION("PSK")
    {
        f.start("psk0");
        run(f.io, [&]() -> asio::awaitable<void> {
            client_conn c(f.mgr);
            co_await c.greet();
            std::string err = co_await c.starttls(f.client("pskc"));
            CHECK(err.empty());
            bool ok = co_await go_and_read(c, *f.disk);
            CHECK(ok);
        }());
    }
    SECTION("PSK with tls-authz naming another user")
    {
        add_object(f.objects, R"({"qom-type":"authz-simple","id":"bob","identity":"bob"})");
        f.start("psk0", "bob");
        CHECK(run(f.io, hung_up_after_tls(f, "pskc")));
    }
}

TEST_CASE("NBD TLS: tls-authz refuses other identities", "[export][tls]")
{
    tls_fixture f;
    f.start("tls0", "other");
    // The client's side of the handshake may complete; the server then hangs up.
    CHECK(run(f.io, hung_up_after_tls(f, "tlsc")));
    // An authz id that names nothing shuts everyone out (looked up at each handshake).
    f.start("tls0", "nobody");
    CHECK(run(f.io, hung_up_after_tls(f, "tlsc")));
}

TEST_CASE("NBD TLS: server start checks the credentials", "[export][tls]")
{
    tls_fixture f;
    exports::nbd_server_options o;
    o.addr.path = f.sock_path;
    o.tls_creds = "tlsc";
    CHECK(f.mgr.start_server(o).error().desc == "Expected TLS credentials for a server endpoint");
    o.tls_creds = "me";
    CHECK(f.mgr.start_server(o).error().desc == "Object with id 'me' is not TLS credentials");
    o.tls_creds = "nope";
    CHECK(f.mgr.start_server(o).error().desc == "No TLS credentials with id 'nope'");
    CHECK_FALSE(f.mgr.server_running());
    // Without tls-creds, STARTTLS is QEMU's "TLS not configured".
    o.tls_creds.reset();
    REQUIRE(f.mgr.start_server(o).has_value());
    run(f.io, [&]() -> asio::awaitable<void> {
        client_conn c(f.mgr);
        co_await c.greet();
        co_await c.option(nbd::opt_starttls, {});
        auto r = co_await c.option_reply();
        CHECK(r.type == nbd::rep_err_policy);
        CHECK(text(r.data) == "TLS not configured");
    }());
}
