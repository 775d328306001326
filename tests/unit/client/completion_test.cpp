// SPDX-License-Identifier: MIT
#include "bjd/client/completion.hpp"

#include <boost/json/parse.hpp>

#include <catch2/catch.hpp>

using namespace bjd::client;
namespace json = boost::json;
using strings = std::vector<std::string>;

namespace {
// A query-qmp-schema answer in QEMU's shape (masked type names), small enough to read:
// a command with a nested object argument and an enum, a flat union with variants, an
// alternate with an object branch, and a command without arguments.
const char* schema_text = R"([
  {"name": "block-job-set-speed", "meta-type": "command", "arg-type": "10", "ret-type": "0"},
  {"name": "blockdev-mirror", "meta-type": "command", "arg-type": "11", "ret-type": "0"},
  {"name": "blockdev-add", "meta-type": "command", "arg-type": "12", "ret-type": "0"},
  {"name": "query-jobs", "meta-type": "command", "arg-type": "0", "ret-type": "0"},
  {"name": "query-block-jobs", "meta-type": "command", "arg-type": "0", "ret-type": "0"},
  {"name": "0", "meta-type": "object", "members": []},
  {"name": "str", "meta-type": "builtin", "json-type": "string"},
  {"name": "int", "meta-type": "builtin", "json-type": "int"},
  {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
  {"name": "10", "meta-type": "object", "members": [{"name": "device", "type": "str"}, {"name": "speed", "type": "int"}]},
  {"name": "11", "meta-type": "object", "members": [
     {"name": "job-id", "type": "str", "default": null}, {"name": "device", "type": "str"},
     {"name": "target", "type": "str"}, {"name": "sync", "type": "20"}, {"name": "unmap", "type": "bool", "default": null},
     {"name": "speed", "type": "int", "default": null}]},
  {"name": "20", "meta-type": "enum", "values": ["top", "full", "none", "incremental"]},
  {"name": "12", "meta-type": "object", "tag": "driver",
   "members": [{"name": "driver", "type": "21"}, {"name": "node-name", "type": "str", "default": null}],
   "variants": [{"case": "file", "type": "13"}, {"case": "raw", "type": "14"}]},
  {"name": "21", "meta-type": "enum", "values": ["file", "raw"]},
  {"name": "13", "meta-type": "object", "members": [{"name": "filename", "type": "str"}]},
  {"name": "14", "meta-type": "object", "members": [{"name": "file", "type": "15"}]},
  {"name": "15", "meta-type": "alternate", "members": [{"type": "12"}, {"type": "str"}]}
])";

schema_index index()
{
    return schema_index::from_introspection(json::parse(schema_text).as_array());
}
} // namespace

TEST_CASE("completion: the index lists commands and argument paths")
{
    auto idx = index();
    CHECK(idx.commands() == strings{"block-job-set-speed", "blockdev-add", "blockdev-mirror", "query-block-jobs", "query-jobs"});
    CHECK(idx.arguments("block-job-set-speed") == strings{"device", "speed"});
    CHECK(idx.arguments("query-jobs").empty());
    CHECK(idx.arguments("no-such").empty());
    // Variant members join the base; the alternate's object branch is followed (to a depth
    // limit, since BlockdevRef refers back to the union).
    auto add = idx.arguments("blockdev-add");
    CHECK(std::find(add.begin(), add.end(), "filename") != add.end());
    CHECK(std::find(add.begin(), add.end(), "file") != add.end());
    CHECK(std::find(add.begin(), add.end(), "file.driver") != add.end());
    CHECK(std::find(add.begin(), add.end(), "file.filename") != add.end());
    CHECK(std::find(add.begin(), add.end(), "file.file.file.driver") == add.end());
    CHECK(idx.values("blockdev-mirror", "sync") == strings{"full", "incremental", "none", "top"});
    CHECK(idx.values("blockdev-mirror", "unmap") == strings{"false", "true"});
    CHECK(idx.values("blockdev-mirror", "speed").empty());
    CHECK(idx.values("blockdev-add", "file.driver") == strings{"file", "raw"});
}

TEST_CASE("completion: command names")
{
    auto idx = index();
    auto c = complete(idx, "", "block-job-set-sp");
    CHECK(c.candidates == strings{"block-job-set-speed"});
    CHECK(c.append_space);
    CHECK(complete(idx, "", "query-").candidates == strings{"query-block-jobs", "query-jobs"});
    CHECK(complete(idx, "  ", "").candidates.size() == 5);
    CHECK(complete(idx, "", "nothing").candidates.empty());
}

TEST_CASE("completion: argument names, without those already given")
{
    auto idx = index();
    auto c = complete(idx, "block-job-set-speed ", "dev");
    CHECK(c.candidates == strings{"device="});
    CHECK_FALSE(c.append_space);
    CHECK(complete(idx, "blockdev-mirror ", "").candidates ==
          strings{"device=", "job-id=", "speed=", "sync=", "target=", "unmap="});
    CHECK(complete(idx, "blockdev-mirror device=a sync=full ", "").candidates ==
          strings{"job-id=", "speed=", "target=", "unmap="});
    CHECK(complete(idx, "blockdev-add driver=raw ", "file.f").candidates ==
          strings{"file.file=", "file.file.driver=", "file.file.file=", "file.file.filename=", "file.file.node-name=",
                  "file.filename="});
    CHECK(complete(idx, "no-such-command ", "a").candidates.empty());
}

TEST_CASE("completion: enum and bool values")
{
    auto idx = index();
    CHECK(complete(idx, "blockdev-mirror ", "sync=").candidates == strings{"sync=full", "sync=incremental", "sync=none", "sync=top"});
    CHECK(complete(idx, "blockdev-mirror ", "sync=f").candidates == strings{"sync=full"});
    CHECK(complete(idx, "blockdev-mirror ", "unmap=t").candidates == strings{"unmap=true"});
    CHECK(complete(idx, "blockdev-mirror ", "speed=1").candidates.empty());
}

TEST_CASE("completion: nothing inside raw JSON or an open quote")
{
    auto idx = index();
    CHECK(complete(idx, "", "{\"exec").candidates.empty());
    CHECK(complete(idx, "{\"execute\": ", "\"query").candidates.empty());
    CHECK(complete(idx, "blockdev-mirror device='a ", "b").candidates.empty());
}
