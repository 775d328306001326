// SPDX-License-Identifier: MIT
// TLS sessions over a socket pair: x509 and PSK handshakes between our client and server,
// data both ways, peer identities, and the failures a peer check must catch.
#include "tls_fixture.hpp"

#include "bjd/crypto/tls_session.hpp"
#include "bjd/qapi/types.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/json/parse.hpp>

#include <fstream>
#include <numeric>

using namespace bjd;
namespace asio = boost::asio;
using sock_t = crypto::tls_session::socket_type;

namespace {

std::shared_ptr<crypto::tls_creds> make_creds(const std::string& json, crypto::endpoint ep)
{
    static crypto::registry reg;
    static int n = 0;
    auto v = boost::json::parse(json).as_object();
    std::string id = "c" + std::to_string(n++);
    v["id"] = id;
    auto o = qapi::decode<qapi::object_options>(v);
    REQUIRE(o.has_value());
    auto r = reg.add(*o);
    INFO((r ? "" : r.error().desc));
    REQUIRE(r.has_value());
    return reg.tls_creds_for(id, ep).value();
}

std::pair<sock_t, sock_t> socket_pair(asio::io_context& io)
{
    asio::local::stream_protocol::socket a(io), b(io);
    asio::local::connect_pair(a, b);
    asio::generic::stream_protocol proto(AF_UNIX, SOCK_STREAM);
    return {sock_t(io, proto, a.release()), sock_t(io, proto, b.release())};
}

struct outcome {
    std::string server_error, client_error;
    std::string server_sees;        // the client's identity
    bool data_ok = false;
};

/// Handshake both ends; when both succeed, send 3 MiB plus small pieces each way at once.
outcome exchange(std::shared_ptr<crypto::tls_creds> sc, std::shared_ptr<crypto::tls_creds> cc,
                 std::string hostname = "localhost")
{
    asio::io_context io;
    auto [ss, cs] = socket_pair(io);
    auto srv = crypto::tls_session::create(sc, ss).value();
    auto cli = crypto::tls_session::create(cc, cs, hostname).value();
    outcome out;
    int done = 0;
    std::vector<char> big(3 << 20);
    std::iota(big.begin(), big.end(), 0);
    bool server_got = false, client_got = false;

    // What each side writes: a header-sized piece, the big buffer, a trailer (an NBD reply's
    // shape). Kept here, outside the coroutines, so the writers can outlive their readers.
    struct plan {
        std::array<char, 16> head{};
        std::array<char, 3> tail{'e', 'n', 'd'};
        std::array<asio::const_buffer, 3> bufs;
        bool wrote = false;
    };
    plan sp, cp;
    sp.head[0] = 'S';
    cp.head[0] = 'C';
    for (plan* p : {&sp, &cp})
        p->bufs = {asio::buffer(p->head), asio::buffer(big), asio::buffer(p->tail)};

    auto side = [&](crypto::tls_session& t, std::string& err, bool& got, bool is_server) -> asio::awaitable<void> {
        err = co_await t.handshake();
        if (!err.empty()) {
            // The other end may wait for more handshake messages: end the stream.
            boost::system::error_code ig;
            (is_server ? ss : cs).shutdown(asio::socket_base::shutdown_both, ig);
            ++done;
            co_return;
        }
        plan& mine = is_server ? sp : cp;
        // Reader and writer run at once on one session, as the NBD server's do.
        asio::co_spawn(io, [&t, &mine]() -> asio::awaitable<void> {
            mine.wrote = !co_await t.write(std::span<const asio::const_buffer>(mine.bufs));
        }, asio::detached);
        std::array<char, 16> rh{};
        std::vector<char> rb(big.size());
        std::array<char, 3> rt{};
        bool ok = !co_await t.read(asio::buffer(rh)) && !co_await t.read(asio::buffer(rb)) &&
                  !co_await t.read(asio::buffer(rt));
        got = ok && rh[0] == (is_server ? 'C' : 'S') && rb == big && rt == mine.tail;
        ++done;
    };
    asio::co_spawn(io, side(*srv, out.server_error, server_got, true), asio::detached);
    asio::co_spawn(io, side(*cli, out.client_error, client_got, false), asio::detached);
    io.run();
    CHECK(done == 2);
    out.server_sees = srv->peer_identity();
    out.data_ok = server_got && client_got && sp.wrote && cp.wrote;
    return out;
}

} // namespace

TEST_CASE("TLS x509: handshake, data both ways, client DN", "[crypto][tls]")
{
    const std::string d = test::tls_dir();
    auto sc = make_creds(R"({"qom-type":"tls-creds-x509","endpoint":"server","dir":")" + d + R"(/server"})",
                         crypto::endpoint::server);
    auto cc = make_creds(R"({"qom-type":"tls-creds-x509","endpoint":"client","dir":")" + d + R"(/client"})",
                         crypto::endpoint::client);
    auto o = exchange(sc, cc);
    CHECK(o.server_error.empty());
    CHECK(o.client_error.empty());
    CHECK(o.data_ok);
    CHECK(o.server_sees == "O=blockjobd tests,CN=client");
}

TEST_CASE("TLS x509: the checks verify-peer makes", "[crypto][tls]")
{
    const std::string d = test::tls_dir();
    using ep = crypto::endpoint;
    auto sc = make_creds(R"({"qom-type":"tls-creds-x509","endpoint":"server","dir":")" + d + R"(/server"})", ep::server);
    auto cc = make_creds(R"({"qom-type":"tls-creds-x509","endpoint":"client","dir":")" + d + R"(/client"})", ep::client);

    SECTION("server name mismatch")
    {
        auto o = exchange(sc, cc, "other.example");
        CHECK(o.client_error == "Certificate does not match the hostname other.example");
        CHECK_FALSE(o.data_ok);
    }
    SECTION("client certificate from an unknown CA")
    {
        auto rogue = make_creds(R"({"qom-type":"tls-creds-x509","endpoint":"client","dir":")" + d + R"(/rogue"})",
                                ep::client);
        auto o = exchange(sc, rogue);
        CHECK(o.server_error == "The certificate hasn't got a known issuer");
        CHECK_FALSE(o.data_ok);
    }
    SECTION("client without a certificate")
    {
        // A client dir with only the CA: the server (verify-peer on) needs a certificate.
        std::string only_ca = d + "/only-ca";
        std::filesystem::create_directories(only_ca);
        std::filesystem::copy_file(d + "/client/ca-cert.pem", only_ca + "/ca-cert.pem",
                                   std::filesystem::copy_options::overwrite_existing);
        auto bare = make_creds(R"({"qom-type":"tls-creds-x509","endpoint":"client","dir":")" + only_ca + R"("})",
                               ep::client);
        auto o = exchange(sc, bare);
        CHECK(o.server_error == "No certificate peer");
        // Without verify-peer the server lets it in, and sees no identity.
        auto lax = make_creds(R"({"qom-type":"tls-creds-x509","endpoint":"server","verify-peer":false,"dir":")" + d +
                                  R"(/server"})", ep::server);
        auto o2 = exchange(lax, bare);
        CHECK(o2.server_error.empty());
        CHECK(o2.data_ok);
        CHECK(o2.server_sees.empty());
    }
}

TEST_CASE("TLS PSK: handshake, username, wrong key", "[crypto][tls]")
{
    const std::string d = test::tls_dir();
    using ep = crypto::endpoint;
    auto sc = make_creds(R"({"qom-type":"tls-creds-psk","endpoint":"server","dir":")" + d + R"(/psk"})", ep::server);
    auto cc = make_creds(R"({"qom-type":"tls-creds-psk","endpoint":"client","username":"alice","dir":")" + d + R"(/psk"})",
                         ep::client);
    auto o = exchange(sc, cc);
    CHECK(o.server_error.empty());
    CHECK(o.client_error.empty());
    CHECK(o.data_ok);
    CHECK(o.server_sees == "alice");

    // The same user with another key: the handshake fails on both ends.
    std::string other = d + "/psk-other";
    std::filesystem::create_directories(other);
    std::ofstream(other + "/keys.psk") << "alice:00112233445566778899aabbccddeeff\n";
    auto bad = make_creds(R"({"qom-type":"tls-creds-psk","endpoint":"client","username":"alice","dir":")" + other + R"("})",
                          ep::client);
    auto o2 = exchange(sc, bad);
    CHECK_FALSE(o2.server_error.empty());
    CHECK_FALSE(o2.client_error.empty());
    CHECK_FALSE(o2.data_ok);
}
