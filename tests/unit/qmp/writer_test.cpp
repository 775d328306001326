// SPDX-License-Identifier: MIT
// QEMU's JSON output format (QEMU's docs/interop/qmp-spec.rst; QEMU's JSON parser in qobject/ "Output string escaping").
#include "bjd/qmp/json.hpp"

#include <catch2/catch.hpp>

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/string.hpp>

namespace json = boost::json;
using bjd::qmp::json_order;
using bjd::qmp::to_json_text;
using bjd::qmp::to_wire_message;

namespace {
std::string quote(std::string_view s)
{
    std::string out;
    bjd::qmp::json_quote(out, s);
    return out;
}
} // namespace

TEST_CASE("writer: string escaping", "[json]")
{
    CHECK(quote("a\"b\\c/d") == R"("a\"b\\c/d")");
    CHECK(quote("\b\f\n\r\t") == R"("\b\f\n\r\t")");
    CHECK(quote(std::string("\x01\x1f\x7f", 3)) == R"("\u0001\u001F\u007F")");
    CHECK(quote("\xC3\xA9\xE2\x82\xAC") == R"("\u00E9\u20AC")");
    CHECK(quote("\xF0\x9F\x98\x80") == R"("\uD83D\uDE00")");
    CHECK(quote("\xF4\x8F\xBF\xBD") == R"("\uDBFF\uDFFD")");
    CHECK(quote(std::string("\xC0\x80", 2)) == R"("\u0000")");
    CHECK(quote(std::string("a\0b", 3)) == R"("a\u0000b")");
    // Invalid UTF-8: lone continuation, impossible byte, truncated sequence, overlong, surrogate.
    CHECK(quote("\x80") == R"("\uFFFD")");
    CHECK(quote("\xFF\xFE") == R"("\uFFFD\uFFFD")");
    CHECK(quote("\xE2\x82x") == R"("\uFFFDx")");
    CHECK(quote("\xC1\x81") == R"("\uFFFD")");
    CHECK(quote("\xED\xA0\x80") == R"("\uFFFD")");
}

TEST_CASE("writer: compact format and numbers", "[json]")
{
    json::value v = {{"a", json::array{1, -2, true, nullptr, 1.5}}, {"b", json::object{}}, {"c", json::array{}}};
    CHECK(to_json_text(v, {false, json_order::insertion}) == R"({"a": [1, -2, true, null, 1.5], "b": {}, "c": []})");
    CHECK(to_json_text(json::value(1.0)) == "1");
    CHECK(to_json_text(json::value(0.1)) == "0.10000000000000001");
    CHECK(to_json_text(json::value(1e300)) == "1.0000000000000001e+300");
    CHECK(to_json_text(json::value(std::uint64_t{18446744073709551615u})) == "18446744073709551615");
    CHECK(to_wire_message(json::object{{"return", json::object{}}}) == "{\"return\": {}}\r\n");
}

TEST_CASE("writer: QDict member order matches qemu's output", "[json]")
{
    // All observed on qsd 7.2.
    json::value version = {{"qemu", {{"major", 7}, {"minor", 2}, {"micro", 0}}}, {"package", ""}};
    CHECK(to_json_text(version) == R"({"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""})");
    json::value ret = {{"return", json::object{}}, {"id", 5}};
    CHECK(to_json_text(ret) == R"({"return": {}, "id": 5})");
    json::value err = {{"error", {{"class", "GenericError"}, {"desc", "x"}}}, {"id", 5}};
    CHECK(to_json_text(err) == R"({"id": 5, "error": {"class": "GenericError", "desc": "x"}})");
    json::value ev = {{"event", "E"}, {"data", json::object{}}, {"timestamp", {{"microseconds", 2}, {"seconds", 1}}}};
    CHECK(to_json_text(ev) == R"({"timestamp": {"seconds": 1, "microseconds": 2}, "event": "E", "data": {}})");
}

TEST_CASE("writer: pretty format", "[json]")
{
    json::value v = {{"return", json::object{}}};
    CHECK(to_json_text(v, {true}) == "{\n    \"return\": {\n    }\n}");
    json::value w = {{"a", json::array{1, 2}}};
    CHECK(to_wire_message(w, {true}) == "{\r\n    \"a\": [\r\n        1,\r\n        2\r\n    ]\r\n}\r\n");
}
