// SPDX-License-Identifier: MIT
// Object options: secrets, TLS credentials, authz-simple; the registry's checks and texts.
#include "tls_fixture.hpp"

#include "bjd/crypto/objects.hpp"
#include "bjd/qapi/types.hpp"

#include <catch2/catch.hpp>

#include <boost/json/parse.hpp>

#include <fstream>

using namespace bjd;

namespace {

/// object-add with JSON arguments: the decoder's error, or the registry's, or "".
std::string add(crypto::registry& r, const std::string& json)
{
    auto o = qapi::decode<qapi::object_options>(boost::json::parse(json));
    if (!o)
        return o.error().desc;
    auto a = r.add(*o);
    return a ? std::string() : a.error().desc;
}

} // namespace

TEST_CASE("secret: data, file and base64", "[crypto]")
{
    CHECK(crypto::load_secret(std::string("abc"), std::nullopt, false).value() == "abc");
    CHECK(crypto::load_secret(std::string("YWJj"), std::nullopt, true).value() == "abc");
    CHECK(crypto::load_secret(std::string(""), std::nullopt, true).value().empty());
    CHECK(crypto::load_secret(std::string("!!!"), std::nullopt, true).error().desc ==
          "Base64 data contains invalid characters");
    CHECK(crypto::load_secret(std::string("x"), std::string("/f"), false).error().desc ==
          "'file' and 'data' are mutually exclusive");
    CHECK(crypto::load_secret(std::nullopt, std::nullopt, false).error().desc ==
          "Either 'file' or 'data' must be provided");
    CHECK(crypto::load_secret(std::nullopt, std::string("/nonexistent/k"), false).error().desc ==
          "Unable to read /nonexistent/k: Failed to open file \u201C/nonexistent/k\u201D: No such file or directory");

    std::string path = test::tls_dir() + "/secret.txt";
    std::ofstream(path) << "s3cr3t\n";
    CHECK(crypto::load_secret(std::nullopt, path, false).value() == "s3cr3t\n");   // the whole file, as QEMU
}

TEST_CASE("registry: ids, duplicates, deletion", "[crypto]")
{
    crypto::registry r;
    CHECK(add(r, R"({"qom-type":"secret","id":"s0","data":"pw"})").empty());
    CHECK(add(r, R"({"qom-type":"secret","id":"s0","data":"pw"})") ==
          "attempt to add duplicate property 's0' to object (type 'container')");
    CHECK(add(r, R"({"qom-type":"secret","id":"1bad","data":"x"})") == "Parameter 'id' expects an identifier");
    CHECK(add(r, R"({"qom-type":"secret","id":"s1","data":"x","loaded":false})") ==
          "Property 'secret.loaded' is not writable");
    CHECK(add(r, R"({"qom-type":"secret","id":"s1","data":"x","keyid":"s0"})") ==
          "blockjobd does not support encrypted secrets ('keyid')");
    CHECK(add(r, R"({"qom-type":"secret","id":"s1","data":"x","keyid":"zz"})") == "No secret with id 'zz'");
    CHECK(add(r, R"({"qom-type":"iothread","id":"io0"})") == "blockjobd does not support objects of type 'iothread'");
    CHECK(add(r, R"({"qom-type":"bogus","id":"b"})") == "Parameter 'qom-type' does not accept value 'bogus'");
    CHECK(add(r, R"({"qom-type":"authz-simple","id":"a0"})") == "Parameter 'identity' is missing");
    CHECK(add(r, R"({"qom-type":"authz-simple","id":"a0","identity":"CN=x"})").empty());
    auto s = std::dynamic_pointer_cast<crypto::secret>(r.find("s0"));
    REQUIRE(s);
    CHECK(s->value() == "pw");
    CHECK(r.find_authz("a0")->allows("CN=x"));
    CHECK_FALSE(r.find_authz("a0")->allows("CN=y"));
    CHECK_FALSE(r.find_authz("s0"));
    CHECK(r.ids() == std::vector<std::string>{"s0", "a0"});

    CHECK(r.del("a0").has_value());
    CHECK(r.del("a0").error().desc == "object 'a0' not found");
    // The id is free again.
    CHECK(add(r, R"({"qom-type":"authz-simple","id":"a0","identity":"CN=z"})").empty());
}

TEST_CASE("tls-creds: directory layout and lookups", "[crypto]")
{
    const std::string d = test::tls_dir();
    crypto::registry r;
    CHECK(add(r, R"({"qom-type":"tls-creds-x509","id":"t","endpoint":"server"})") == "Missing 'dir' property value");
    CHECK(add(r, R"({"qom-type":"tls-creds-x509","id":"t","dir":"/nonexistent","endpoint":"server"})") ==
          "Unable to access credentials /nonexistent/ca-cert.pem: No such file or directory");
    // A client directory has no server certificate.
    CHECK(add(r, R"({"qom-type":"tls-creds-x509","id":"t","endpoint":"server","dir":")" + d + R"(/client"})") ==
          "Unable to access credentials " + d + "/client/server-cert.pem: No such file or directory");
    CHECK(add(r, R"({"qom-type":"tls-creds-x509","id":"t","endpoint":"middle","dir":"/x"})") ==
          "Parameter 'endpoint' does not accept value 'middle'");
    CHECK(add(r, R"({"qom-type":"tls-creds-x509","id":"t","endpoint":"server","dir":")" + d +
                     R"(/server","loaded":false})") == "Property 'tls-creds-x509.loaded' is not writable");
    CHECK(add(r, R"({"qom-type":"tls-creds-x509","id":"t","endpoint":"server","dir":")" + d +
                     R"(/server","passwordid":"nope"})") == "No secret with id 'nope'");
    CHECK(add(r, R"({"qom-type":"tls-creds-x509","id":"tx","endpoint":"server","dir":")" + d + R"(/server"})").empty());
    // Default endpoint: client.
    CHECK(add(r, R"({"qom-type":"tls-creds-x509","id":"tc","dir":")" + d + R"(/client"})").empty());

    CHECK(add(r, R"({"qom-type":"tls-creds-psk","id":"p","dir":"/nonexistent","endpoint":"server"})") ==
          "Unable to access credentials /nonexistent/keys.psk: No such file or directory");
    CHECK(add(r, R"({"qom-type":"tls-creds-psk","id":"p","endpoint":"client","dir":")" + d + R"(/psk"})") ==
          "Username qemu not found in PSK file " + d + "/psk/keys.psk");
    CHECK(add(r, R"({"qom-type":"tls-creds-psk","id":"pc","endpoint":"client","username":"alice","dir":")" + d +
                     R"(/psk"})").empty());
    CHECK(add(r, R"({"qom-type":"tls-creds-psk","id":"ps","endpoint":"server","dir":")" + d + R"(/psk"})").empty());
    CHECK(add(r, R"({"qom-type":"authz-simple","id":"az","identity":"x"})").empty());

    using ep = crypto::endpoint;
    CHECK(r.tls_creds_for("tx", ep::server).value()->is_x509());
    CHECK_FALSE(r.tls_creds_for("ps", ep::server).value()->is_x509());
    CHECK(r.tls_creds_for("ps", ep::server).value()->priority() == "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK");
    CHECK(r.tls_creds_for("tx", ep::server).value()->priority() == "NORMAL");
    CHECK(r.tls_creds_for("nope", ep::server).error().desc == "No TLS credentials with id 'nope'");
    CHECK(r.tls_creds_for("az", ep::server).error().desc == "Object with id 'az' is not TLS credentials");
    CHECK(r.tls_creds_for("tc", ep::server).error().desc == "Expected TLS credentials for a server endpoint");
    CHECK(r.tls_creds_for("tx", ep::client).error().desc == "Expected TLS credentials for a client endpoint");

    // Deleting the id leaves a holder's credentials alive.
    auto held = r.tls_creds_for("tx", ep::server).value();
    CHECK(r.del("tx").has_value());
    CHECK_FALSE(r.find("tx"));
    CHECK(held->id() == "tx");
}
