// SPDX-License-Identifier: MIT
#include "bjd/client/connection.hpp"

#include <boost/json/parse.hpp>

#include <catch2/catch.hpp>

using namespace bjd::client;

TEST_CASE("address: UNIX paths and TCP host:port")
{
    auto a = address::parse("/run/blockjobd/qmp.sock");
    CHECK_FALSE(a.tcp);
    CHECK(a.path == "/run/blockjobd/qmp.sock");
    CHECK(address::parse("qmp.sock").path == "qmp.sock");
    CHECK(address::parse("unix:localhost:4444").path == "localhost:4444");
    CHECK(address::parse("./a:1").path == "./a:1");   // a '/' means a path
    a = address::parse("localhost:4444");
    CHECK(a.tcp);
    CHECK(a.host == "localhost");
    CHECK(a.port == "4444");
    a = address::parse("[::1]:4444");
    CHECK(a.tcp);
    CHECK(a.host == "::1");
    CHECK(a.to_string() == "[::1]:4444");
    a = address::parse(":4444");
    CHECK(a.tcp);
    CHECK(a.host == "localhost");
    a = address::parse("tcp:example.org:qmp");
    CHECK(a.tcp);
    CHECK(a.port == "qmp");
    CHECK_FALSE(address::parse("host:name").tcp);   // not numeric, no tcp: prefix
}

TEST_CASE("error_text: class and description of an error reply")
{
    CHECK(error_text(boost::json::parse(R"({"error":{"class":"GenericError","desc":"no"}})").as_object()) == "GenericError: no");
    CHECK(error_text(boost::json::parse(R"({"return":{}})").as_object()).empty());
}
