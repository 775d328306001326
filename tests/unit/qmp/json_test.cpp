// SPDX-License-Identifier: MIT
// The QMP JSON streamer/parser against QEMU 7.2's observed behaviour (QEMU's JSON parser in qobject/).
#include "bjd/qmp/json.hpp"

#include <catch2/catch.hpp>

#include <boost/json/array.hpp>
#include <boost/json/string.hpp>

#include <string>
#include <vector>

using bjd::qmp::json_message;
using bjd::qmp::json_streamer;
using bjd::qmp::to_json_text;

namespace {

/// A desc as it reads on the wire (non-ASCII escaped), without the JSON quoting of `"` and `\`.
std::string wire_text(const std::string& raw)
{
    std::string q;
    bjd::qmp::json_quote(q, raw);
    q = q.substr(1, q.size() - 2);
    std::string out;
    for (std::size_t i = 0; i < q.size(); ++i) {
        if (q[i] == '\\' && i + 1 < q.size() && (q[i + 1] == '"' || q[i + 1] == '\\')) {
            ++i;
        }
        out.push_back(q[i]);
    }
    return out;
}

/// Feeds `in` (without flushing, like a live connection) and renders each message as its value
/// in QEMU's format or as "ERR:<desc as on the wire>".
std::vector<std::string> run(std::string_view in)
{
    json_streamer s;
    std::vector<std::string> out;
    for (const json_message& m : s.feed(in)) {
        out.push_back(m.ok() ? to_json_text(*m.value) : "ERR:" + wire_text(m.error));
    }
    return out;
}

using strings = std::vector<std::string>;

} // namespace

TEST_CASE("json: well-formed messages and the QEMU dialect", "[json]")
{
    CHECK(run(R"({"execute": "query-version", "id": [1, {"a": null}]})") ==
          strings{R"({"execute": "query-version", "id": [1, {"a": null}]})"});
    // Single quotes, \' in both quote styles, \/ and \u0000 kept as C0 80.
    CHECK(run(R"({'execute':'x', 'id':'a\'b"\u0000\/'})") ==
          strings{R"({"execute": "x", "id": "a'b\"\u0000/"})"});
    CHECK(run(R"(["\'"])") == strings{R"(["'"])"});
    json_streamer s;
    auto m = s.feed(R"(["\u0000"])");
    REQUIRE(m.size() == 1);
    CHECK(std::string(m[0].value->as_array()[0].as_string()) == std::string("\xC0\x80", 2));
    // Surrogate pairs are combined into one 4-byte UTF-8 sequence; output re-splits them.
    m = s.feed(R"(["\uD83D\uDE00\u00e9"])");
    CHECK(std::string(m[0].value->as_array()[0].as_string()) == "\xF0\x9F\x98\x80\xC3\xA9");
    CHECK(to_json_text(*m[0].value) == R"(["\uD83D\uDE00\u00E9"])");
    // Several messages in one chunk, no delimiter; whitespace ignored.
    CHECK(run("{}[]\t\r\n{ }") == strings{"{}", "[]", "{}"});
}

TEST_CASE("json: chunked input yields the same messages", "[json]")
{
    const std::string text = R"({"execute":'quit',"id":[1.5,-0,18446744073709551615,"\u00e9"]} {"a":true})";
    json_streamer whole;
    auto expected = whole.feed(text);
    REQUIRE(expected.size() == 2);
    json_streamer bytewise;
    std::vector<json_message> got;
    for (char c : text) {
        bytewise.feed(std::string_view(&c, 1), got);
    }
    REQUIRE(got.size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
        CHECK(*got[i].value == *expected[i].value);
    }
}

TEST_CASE("json: number classification", "[json]")
{
    json_streamer s;
    auto m = s.feed("[1, -0, 9223372036854775807, 9223372036854775808, 18446744073709551615, "
                    "18446744073709551616, -9223372036854775808, -9223372036854775809, 1.0, 1e3, 0.1, -0.0, 1e400]");
    REQUIRE(m.size() == 1);
    const auto& a = m[0].value->as_array();
    CHECK(a[0].is_int64());
    CHECK(a[1].is_int64());
    CHECK(a[2].is_int64());
    CHECK(a[3].is_uint64());
    CHECK(a[4].is_uint64());
    CHECK(a[5].is_double());
    CHECK(a[6].is_int64());
    CHECK(a[7].is_double());
    CHECK(a[8].is_double());
    CHECK(a[9].is_double());
    // Observed on qsd 7.2 (except 1e400, which qemu prints as the invalid token inf).
    CHECK(to_json_text(*m[0].value) ==
          "[1, 0, 9223372036854775807, 9223372036854775808, 18446744073709551615, 1.8446744073709552e+19, "
          "-9223372036854775808, -9.2233720368547758e+18, 1, 1000, 0.10000000000000001, -0, 1e999]");
}

TEST_CASE("json: syntax errors have QEMU's texts", "[json]")
{
    const std::string p = "ERR:JSON parse error, ";
    CHECK(run(R"({ "execute": })") == strings{p + "expecting value"});
    CHECK(run(R"({"execute":"x",})") == strings{p + "expecting value"});
    CHECK(run("[1,]") == strings{p + "expecting value"});
    CHECK(run("{,}") == strings{p + "expecting value"});
    CHECK(run("[,]") == strings{p + "expecting value"});
    CHECK(run(R"({"a":1,"a":2})") == strings{p + "duplicate key"});
    CHECK(run("{1:2}") == strings{p + "key is not a string in object"});
    CHECK(run(R"({"execute" "x"})") == strings{p + "missing : in object pair"});
    CHECK(run(R"({"a"})") == strings{p + "missing : in object pair"});
    CHECK(run(R"({"id":0x10})") == strings{p + "expected separator in dict"});
    CHECK(run(R"({"a":1 "b":2})") == strings{p + "expected separator in dict"});
    CHECK(run("[1 2]") == strings{p + "expected separator in list"});
    CHECK(run("[1:2]") == strings{p + "expected separator in list"});
    CHECK(run("tru\n") == strings{p + "invalid keyword 'tru'"});
    CHECK(run("nul\n") == strings{p + "invalid keyword 'nul'"});
    CHECK(run(R"("\x")") == strings{p + "invalid escape sequence in string"});
    CHECK(run(R"("\uD800")") == strings{p + "\\uD800 is not a valid Unicode character"});
    CHECK(run(R"("\uDC00")") == strings{p + "\\uDC00 is not a valid Unicode character"});
    CHECK(run(R"("\uD800\u0041")") == strings{p + "\\uD800 is not a valid Unicode character"});
    CHECK(run(R"("\uffff")") == strings{p + "\\uffff is not a valid Unicode character"});
    CHECK(run(R"("\u12")") == strings{p + "\\u12\" is not a valid Unicode character"});
    CHECK(run("\"\xED\xA0\x80\"") == strings{p + "invalid UTF-8 sequence in string"});
    CHECK(run("\"\xC1\x81\"") == strings{p + "invalid UTF-8 sequence in string"});
    // A first error wins over later ones: the key's own error, not "key is not a string".
    CHECK(run("{tru:1}") == strings{p + "invalid keyword 'tru'"});
    // Stray closers and separators at depth zero.
    CHECK(run("]") == strings{p + "expecting value"});
    CHECK(run("}") == strings{p + "expecting value"});
    CHECK(run(":") == strings{p + "expecting value"});
    CHECK(run(",") == strings{p + "expecting value"});
    CHECK(run("{}}") == strings{"{}", p + "expecting value"});
    CHECK(run("[}") == strings{p + "expecting value"});
    CHECK(run("[}]") == strings{p + "expecting value", p + "expecting value"});
    CHECK(run(R"({"a":[}])") == strings{p + "expecting value"});
}

TEST_CASE("json: parse error messages are cut like QEMU's 1024-byte buffer", "[json]")
{
    auto r = run(std::string(2000, 'x') + "\n");
    REQUIRE(r.size() == 1);
    const std::string prefix = "ERR:JSON parse error, ";
    CHECK(r[0].size() == prefix.size() + 1023);
    CHECK(r[0].substr(0, prefix.size() + 17) == prefix + "invalid keyword '");
}

TEST_CASE("json: lexical errors, stray text and recovery", "[json]")
{
    const std::string p = "ERR:JSON parse error, ";
    CHECK(run("\x01") == strings{p + "stray '\\u0001'"});
    CHECK(run("+1 ") == strings{p + "stray '+'"});
    CHECK(run(".5 ") == strings{p + "stray '.'"});
    CHECK(run("01 ") == strings{p + "stray '01'"});
    CHECK(run("\xFF") == strings{p + "stray '\\uFFFD'"});
    CHECK(run("%d\n") == strings{p + "stray '%'"});
    CHECK(run("- ") == strings{p + "stray '- '"});
    CHECK(run("1e ") == strings{p + "stray '1e '"});
    CHECK(run("\"a\x01\"") == strings{p + "stray '\"a\\u0001'"});
    // Non-ASCII in the stray text is escaped; recovery skips to the next structural char.
    CHECK(run("{\"execute\":\"query-version\",\"id\":\"\xC3\xA9\xF0\x9F\x98\x80\xFF\x01x\"}") ==
          strings{p + "stray '\"\\u00E9\\uD83D\\uDE00\\uFFFD'", p + "stray '\\u0001'", p + "expecting value"});
    CHECK(run("{\"id\":\"\x01\"}") == strings{p + "stray '\"\\u0001'", p + "expecting value"});
    CHECK(run("abc\x01" "def{}") == strings{p + "invalid keyword 'abc'", p + "stray '\\u0001'", "{}"});
    // A control character between messages resets cleanly.
    CHECK(run("{\"id\":1}\x01{\"id\":2}") == strings{R"({"id": 1})", p + "stray '\\u0001'", R"({"id": 2})"});
    // Recovery skips ordinary text but not tabs-only; it stops at structural characters.
    CHECK(run("+garbage text\t[1]") == strings{p + "stray '+'", "[1]"});
}

TEST_CASE("json: the wedge and its documented reset", "[json]")
{
    json_streamer s;
    // Mismatched closer inside an object: counts stay open, nothing comes out.
    CHECK(s.feed(R"({"id":[1,})").empty());
    CHECK(s.feed(R"({"execute":"x"})").empty());
    // One control character: exactly one error, then a clean state.
    auto m = s.feed("\x01{\"id\":3}");
    REQUIRE(m.size() == 2);
    CHECK(m[0].error == "JSON parse error, stray '\x01'");
    CHECK(to_json_text(*m[1].value) == R"({"id": 3})");
    // Incomplete scalars wait for their terminator.
    CHECK(json_streamer().feed("null").empty());
    CHECK(json_streamer().feed("-").empty());
    CHECK(json_streamer().feed("[[]").empty());
    json_streamer n;
    CHECK(n.feed("null").empty());
    CHECK(n.feed(" ").size() == 1);
}

TEST_CASE("json: flush completes the pending token", "[json]")
{
    auto m = bjd::qmp::parse_json_messages("123");
    REQUIRE(m.size() == 1);
    CHECK(m[0].value->as_int64() == 123);
    m = bjd::qmp::parse_json_messages("[1,");
    REQUIRE(m.size() == 1);
    CHECK(m[0].error == "JSON parse error, premature EOI");
}

TEST_CASE("json: nesting limit", "[json]")
{
    auto ok = run(std::string(1024, '[') + std::string(1024, ']'));
    REQUIRE(ok.size() == 1);
    CHECK(ok[0].substr(0, 4) == "[[[[");
    // 1025 levels: the limit error, then every orphaned closer is its own error (as qemu does).
    auto r = run(std::string(1025, '[') + std::string(1025, ']'));
    REQUIRE(r.size() == 1026);
    CHECK(r[0] == "ERR:JSON nesting depth limit exceeded");
    CHECK(r[1] == "ERR:JSON parse error, expecting value");
    CHECK(r[1025] == "ERR:JSON parse error, expecting value");
    // The connection state is usable afterwards.
    CHECK(run(std::string(1025, '{') + "\x01{}") ==
          strings{"ERR:JSON nesting depth limit exceeded", "ERR:JSON parse error, stray '\\u0001'", "{}"});
}

TEST_CASE("json: token size and count limits", "[json]")
{
    json_streamer s;
    // Token count: 2 Mi tokens in one message.
    std::string many = "[";
    many.reserve(4u << 20);
    for (std::size_t i = 0; i < (std::size_t{2} << 20) / 2; ++i) {
        many += "1,";
    }
    auto m = s.feed(many);
    REQUIRE(m.size() == 1);
    CHECK(m[0].error == "JSON token count limit exceeded");
    m = s.feed("\x01[2]");   // the rest of the message is then parsed on its own: reset it
    REQUIRE(!m.empty());
    CHECK(to_json_text(*m.back().value) == "[2]");

    // Token size: one string longer than 64 MiB.
    json_streamer t;
    std::string big = "[\"" + std::string(bjd::qmp::json_max_token_size, 'a');
    m = t.feed(big);
    REQUIRE(m.size() == 1);
    CHECK(m[0].error == "JSON token size limit exceeded");
}

TEST_CASE("json: a 1 MB garbage line gives one error and the stream goes on", "[json]")
{
    auto r = run(std::string(1 << 20, 'a') + "\n{\"execute\":\"x\"}");
    REQUIRE(r.size() == 2);
    CHECK(r[0].rfind("ERR:JSON parse error, invalid keyword 'aaaa", 0) == 0);
    CHECK(r[1] == R"({"execute": "x"})");
}
