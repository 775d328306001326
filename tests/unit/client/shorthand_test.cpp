// SPDX-License-Identifier: MIT
#include "bjd/client/shorthand.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <catch2/catch.hpp>

using namespace bjd::client;
namespace json = boost::json;

namespace {
std::string args_of(std::string_view line)
{
    return json::serialize(parse_line(line).arguments);
}
std::string error_of(std::string_view line)
{
    try {
        parse_line(line);
    } catch (const shorthand_error& e) {
        return e.what();
    }
    return "no error";
}
} // namespace

TEST_CASE("shorthand: command and typed values")
{
    auto p = parse_line("blockdev-mirror job-id=m0 device=src sync=full speed=1048576 unmap=False buf-size=-5 x=1.5e3");
    CHECK_FALSE(p.empty);
    CHECK_FALSE(p.raw);
    CHECK(p.command == "blockdev-mirror");
    CHECK(json::serialize(p.arguments) ==
          R"({"job-id":"m0","device":"src","sync":"full","speed":1048576,"unmap":false,"buf-size":-5,"x":1.5E3})");
    CHECK(p.arguments.at("speed").is_int64());
    CHECK(p.arguments.at("x").is_double());
}

TEST_CASE("shorthand: what is not a JSON number, bool, object or array stays a string")
{
    CHECK(args_of("c a=null b=007 c=1x d=0x10 e= f=[1, g={bad h=\"quoted words\" i=TRUE") ==
          R"({"a":"null","b":"007","c":"1x","d":"0x10","e":"","f":"[1,","g":"{bad","h":"quoted words","i":true})");
}

TEST_CASE("shorthand: nested JSON values")
{
    CHECK(args_of(R"(transaction actions='[{"type": "block-dirty-bitmap-add", "data": {"node": "n", "name": "b"}}]')") ==
          R"({"actions":[{"type":"block-dirty-bitmap-add","data":{"node":"n","name":"b"}}]})");
    CHECK(args_of(R"(c o='{"a":[1,2]}')") == R"({"o":{"a":[1,2]}})");
    // As in a shell, unquoted double quotes are removed: the value no longer parses.
    CHECK(args_of(R"(c o={"a":1})") == R"({"o":"{a:1}"})");
}

TEST_CASE("shorthand: dotted keys build nested objects")
{
    CHECK(args_of("blockdev-add driver=raw node-name=d0 file.driver=file file.filename=/tmp/a.img file.aio.x=1") ==
          R"({"driver":"raw","node-name":"d0","file":{"driver":"file","filename":"/tmp/a.img","aio":{"x":1}}})");
}

TEST_CASE("shorthand: dotted key conflicts are errors, as in qmp-shell")
{
    CHECK(error_of("c a=1 a=2") == "Cannot set 'a' multiple times");
    CHECK(error_of("c a=1 a.b=2") == "Cannot use 'a' as both leaf and non-leaf key");
    CHECK(error_of("c a.b=1 a=2") == "Cannot use 'a' as both leaf and non-leaf key");
    CHECK(error_of("c a.b.c=1 a.b=2") == "Cannot use 'a.b' as both leaf and non-leaf key");
    CHECK(error_of("c a..b=1") == "Invalid key 'a..b'");
    CHECK(error_of("c =1") == "Invalid key ''");
    CHECK(error_of("c novalue") == "Expected a key=value pair, got 'novalue'");
}

TEST_CASE("shorthand: shell-like word splitting")
{
    CHECK(split_words(R"(  a  'b c'  "d \"e\" \\"  f\ g h''i)") ==
          std::vector<std::string>{"a", "b c", R"(d "e" \)", "f g", "hi"});
    CHECK(split_words("") == std::vector<std::string>{});
    CHECK_THROWS_WITH(split_words("a 'b"), "No closing quotation");
    CHECK_THROWS_WITH(split_words("a \"b"), "No closing quotation");
    CHECK_THROWS_WITH(split_words("a \\"), "No escaped character");
}

TEST_CASE("shorthand: raw JSON lines, blanks and comments")
{
    auto p = parse_line(R"(  {"execute": "query-jobs", "id": 3})");
    CHECK(p.raw);
    CHECK(json::serialize(p.request) == R"({"execute":"query-jobs","id":3})");
    CHECK(parse_line("   ").empty);
    CHECK(parse_line("# a comment").empty);
    CHECK(error_of("{\"execute\": ").starts_with("Invalid JSON"));
}

TEST_CASE("shorthand: words from a command line are not split again")
{
    auto p = parse_words({"block-job-set-speed", "device=a b", "speed=5"});
    CHECK(p.command == "block-job-set-speed");
    CHECK(json::serialize(p.arguments) == R"({"device":"a b","speed":5})");
    CHECK(parse_words({}).empty);
}
