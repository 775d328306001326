// SPDX-License-Identifier: MIT
// Argument decoding errors: QEMU 7.2's texts and ordering (QEMU's qapi/qobject-input-visitor.c).
#include "bjd/qapi/types.hpp"

#include <catch2/catch.hpp>

#include <boost/json/parse.hpp>

#include <string>

namespace json = boost::json;
using namespace bjd::qapi;

namespace {

/// The error text decode<T> gives for `text` ("" when it succeeds).
template <class T>
std::string decode_error(std::string_view text)
{
    auto r = decode<T>(json::parse(text));
    if (r)
        return "";
    CHECK(r.error().cls == error_class::generic_error);
    return r.error().desc;
}

} // namespace

TEST_CASE("qapi: a missing required member is named by its path", "[qapi]")
{
    CHECK(decode_error<blockdev_options>(R"({"driver":"file","node-name":"a"})")
          == "Parameter 'filename' is missing");
    CHECK(decode_error<blockdev_options>(
              R"({"driver":"raw","node-name":"a","file":{"driver":"file"}})")
          == "Parameter 'file.filename' is missing");
}

TEST_CASE("qapi: the union discriminator is required", "[qapi]")
{
    CHECK(decode_error<blockdev_options>(R"({"node-name":"a","filename":"/x"})")
          == "Parameter 'driver' is missing");
    CHECK(decode_error<blockdev_options>(R"({"driver":"qcow9","node-name":"a"})")
          == "Parameter 'driver' does not accept value 'qcow9'");
}

TEST_CASE("qapi: unexpected members are reported with their path, after missing ones", "[qapi]")
{
    CHECK(decode_error<blockdev_options>(R"({"driver":"file","filename":"/x","bogus":1})")
          == "Parameter 'bogus' is unexpected");
    CHECK(decode_error<blockdev_options>(
              R"({"driver":"raw","file":{"driver":"file","filename":"/x","bogus":1}})")
          == "Parameter 'file.bogus' is unexpected");
    // Missing wins even when the unexpected member comes first.
    CHECK(decode_error<blockdev_options>(R"({"bogus":1,"driver":"file"})")
          == "Parameter 'filename' is missing");
    // A member of another branch is unexpected for this one.
    CHECK(decode_error<blockdev_options>(R"({"driver":"null-co","filename":"/x"})")
          == "Parameter 'filename' is unexpected");
}

TEST_CASE("qapi: wrong JSON types name the dotted path and the expected type", "[qapi]")
{
    CHECK(decode_error<blockdev_options>(
              R"({"driver":"file","filename":"/x","cache":{"direct":"yes"}})")
          == "Invalid parameter type for 'cache.direct', expected: boolean");
    CHECK(decode_error<blockdev_options>(R"({"driver":"file","filename":"/x","cache":1})")
          == "Invalid parameter type for 'cache', expected: object");
    CHECK(decode_error<blockdev_options>(R"({"driver":"file","filename":5})")
          == "Invalid parameter type for 'filename', expected: string");
    CHECK(decode_error<blockdev_options>(R"([1])")
          == "Invalid parameter type for '<anonymous>', expected: object");
}

TEST_CASE("qapi: null is a type error for a non-nullable string", "[qapi]")
{
    CHECK(decode_error<blockdev_options>(R"({"driver":"file","filename":null})")
          == "Invalid parameter type for 'filename', expected: string");
    CHECK(decode_error<blockdev_options>(R"({"driver":"file","filename":"/x","node-name":null})")
          == "Invalid parameter type for 'node-name', expected: string");
}

TEST_CASE("qapi: enum errors name the bare member", "[qapi]")
{
    CHECK(decode_error<blockdev_options>(R"({"driver":"file","filename":"/x","aio":"zzz"})")
          == "Parameter 'aio' does not accept value 'zzz'");
    CHECK(decode_error<blockdev_options>(
              R"({"driver":"raw","file":{"driver":"file","filename":"/x","aio":"zzz"}})")
          == "Parameter 'aio' does not accept value 'zzz'");
    CHECK(decode_error<blockdev_options>(R"({"driver":"file","filename":"/x","aio":1})")
          == "Invalid parameter type for 'aio', expected: string");
}

TEST_CASE("qapi: list elements are [i] in paths and 'null' in enum errors", "[qapi]")
{
    CHECK(decode_error<std::vector<qmp_capability>>(R"(["oob","foo"])")
          == "Parameter 'null' does not accept value 'foo'");
    CHECK(decode_error<schema_info_enum>(R"({"members":[{"name":"a"},{"name":1}],"values":[]})")
          == "Invalid parameter type for 'members[1].name', expected: string");
    CHECK(decode_error<schema_info_enum>(R"({"members":[{"name":"a","x":1}],"values":[]})")
          == "Parameter 'members[0].x' is unexpected");
    CHECK(decode_error<schema_info_enum>(R"({"members":[],"values":"a"})")
          == "Invalid parameter type for 'values', expected: array");
}

TEST_CASE("qapi: int members reject doubles, booleans and values above INT64_MAX", "[qapi]")
{
    const char* base = R"({"driver":"file","filename":"/x","aio-max-batch":)";
    for (const char* bad : {"1.0", "1e3", "true", "9223372036854775808", "\"1\""})
        CHECK(decode_error<blockdev_options>(std::string(base) + bad + "}")
              == "Invalid parameter type for 'aio-max-batch', expected: integer");
    CHECK(decode_error<blockdev_options>(std::string(base) + "-9223372036854775808}").empty());
}

TEST_CASE("qapi: sized integers report their C type with the bare name", "[qapi]")
{
    const char* base = R"({"count":1,"recording":true,"busy":false,"persistent":false,"granularity":)";
    CHECK(decode_error<block_dirty_info>(std::string(base) + "4294967296}")
          == "Parameter 'granularity' expects uint32_t");
    CHECK(decode_error<block_dirty_info>(std::string(base) + "-1}")
          == "Parameter 'granularity' expects uint32_t");
    auto ok = decode<block_dirty_info>(json::parse(std::string(base) + "4294967295}"));
    REQUIRE(ok.has_value());
    CHECK(ok->granularity == 4294967295u);
    // The type check comes first and uses the uint64 wording with the path.
    CHECK(decode_error<block_dirty_info>(std::string(base) + "1.5}")
          == "Parameter 'granularity' expects uint64");
}

TEST_CASE("qapi: uint64 accepts negative numbers as two's complement", "[qapi]")
{
    const char* base = R"({"driver":"null-co","node-name":"n","latency-ns":)";
    auto r = decode<blockdev_options>(json::parse(std::string(base) + "-1}"));
    REQUIRE(r.has_value());
    REQUIRE(r->u.null_co);
    CHECK(r->u.null_co->latency_ns == UINT64_MAX);
    auto big = decode<blockdev_options>(json::parse(std::string(base) + "18446744073709551615}"));
    REQUIRE(big.has_value());
    CHECK(big->u.null_co->latency_ns == UINT64_MAX);
    CHECK(decode_error<blockdev_options>(std::string(base) + "\"1\"}")
          == "Parameter 'latency-ns' expects uint64");
    CHECK(decode_error<blockdev_options>(std::string(base) + "1.5}")
          == "Parameter 'latency-ns' expects uint64");
}

TEST_CASE("qapi: alternates pick the branch by JSON type", "[qapi]")
{
    auto by_name = decode<blockdev_options>(json::parse(R"({"driver":"raw","file":"node0"})"));
    REQUIRE(by_name.has_value());
    REQUIRE(by_name->u.raw);
    REQUIRE(std::holds_alternative<std::string>(by_name->u.raw->file));
    CHECK(std::get<std::string>(by_name->u.raw->file) == "node0");

    auto inline_opts = decode<blockdev_options>(
        json::parse(R"({"driver":"raw","file":{"driver":"file","filename":"/x"}})"));
    REQUIRE(inline_opts.has_value());
    const auto& child = std::get<box<blockdev_options>>(inline_opts->u.raw->file);
    CHECK(child->driver == blockdev_driver::file);
    REQUIRE(child->u.file);
    CHECK(child->u.file->filename == "/x");

    CHECK(decode_error<blockdev_options>(R"({"driver":"raw","file":42})")
          == "Invalid parameter type for 'file', expected: BlockdevRef");
    CHECK(decode_error<blockdev_options>(R"({"driver":"raw","file":null})")
          == "Invalid parameter type for 'file', expected: BlockdevRef");
}

TEST_CASE("qapi: enum helpers map wire names both ways", "[qapi]")
{
    CHECK(to_string(blockdev_aio_options::io_uring) == "io_uring");
    CHECK(to_string(blockdev_driver::null_co) == "null-co");
    CHECK(to_string(on_off_auto::auto_) == "auto");
    blockdev_driver d{};
    CHECK(parse_enum("null-aio", d));
    CHECK(d == blockdev_driver::null_aio);
    CHECK_FALSE(parse_enum("null_aio", d));
    CHECK(d == blockdev_driver::null_aio);
}
