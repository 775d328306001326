// SPDX-License-Identifier: MIT
#include "bjd/chardev/base64.hpp"

#include "check_result.hpp"

#include <catch2/catch.hpp>

using namespace bjd::chardev;


using bjd::test::ok;

namespace {

std::string error_of(std::string_view in)
{
    auto r = base64_decode(in);
    return r ? std::string("ok") : r.error().desc;
}

} // namespace

TEST_CASE("base64 round trips for every length")
{
    std::string data;
    for (int i = 0; i < 40; ++i) {
        auto enc = base64_encode(data);
        CHECK(enc.size() % 4 == 0);
        auto dec = base64_decode(enc);
        REQUIRE(ok(dec));
        CHECK(*dec == data);
        data.push_back(static_cast<char>(i * 37 + 200));
    }
}

TEST_CASE("base64 known vectors (RFC 4648 §10)")
{
    CHECK(base64_encode("") == "");
    CHECK(base64_encode("f") == "Zg==");
    CHECK(base64_encode("fo") == "Zm8=");
    CHECK(base64_encode("foo") == "Zm9v");
    CHECK(base64_encode("foobar") == "Zm9vYmFy");
    CHECK(*base64_decode("Zm9vYg==") == "foob");
    CHECK(*base64_decode("Zm9vYmE=") == "fooba");
    CHECK(*base64_decode("") == "");
    CHECK(*base64_decode("AAEC/w==") == std::string("\0\x01\x02\xff", 4));
}

TEST_CASE("base64 rejects invalid input")
{
    const std::string chars = "Base64 data contains invalid characters";
    const std::string pad = "Base64 data has invalid padding";
    const std::string trunc = "Base64 data is truncated";
    CHECK(error_of("aGk*") == chars);
    CHECK(error_of("aGVs bG8=") == chars);
    CHECK(error_of("aGVs\nbG8=") == chars);
    CHECK(error_of("-_-_") == chars);
    CHECK(error_of(std::string("aG\0k", 4)) == chars);
    CHECK(error_of("aGk") == trunc);
    CHECK(error_of("aGVsbG8") == trunc);
    CHECK(error_of("a") == trunc);
    CHECK(error_of("aA=") == trunc);
    CHECK(error_of("YQ==YQ==") == pad);
    CHECK(error_of("Y===") == pad);
    CHECK(error_of("====") == pad);
    CHECK(error_of("=aGk") == pad);
    CHECK(error_of("aG=k") == pad);
}
