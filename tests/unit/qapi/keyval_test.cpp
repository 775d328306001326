// SPDX-License-Identifier: MIT
#include "bjd/qapi/keyval.hpp"
#include "bjd/qapi/types.hpp"

#include <catch2/catch.hpp>

using namespace bjd::qapi;

namespace {

result<blockdev_options> blockdev_from_keyval(std::string_view text)
{
    auto kv = parse_keyval(text);
    REQUIRE(kv.has_value());
    return decode_keyval<blockdev_options>(boost::json::value(std::move(*kv)),
                                           [](const boost::json::value& v) { return decode<blockdev_options>(v); });
}

} // namespace

TEST_CASE("keyval: strings become the member's number and boolean types", "[qapi][keyval]")
{
    auto r = blockdev_from_keyval("driver=null-co,node-name=n,size=1G,read-zeroes=on");
    REQUIRE(r.has_value());
    CHECK(r->node_name == "n");
}

TEST_CASE("keyval: uint64 members take strings too (null-co latency-ns)", "[qapi][keyval]")
{
    // uint64 decode errors are worded as a bad value, not a bad type; the conversion must
    // still recognise them (qemu-storage-daemon accepts this command line).
    auto r = blockdev_from_keyval("driver=null-co,node-name=n,latency-ns=2000000");
    CHECK(r.has_value());
    auto bad = blockdev_from_keyval("driver=null-co,node-name=n,latency-ns=soon");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().desc == "Parameter 'latency-ns' expects uint64");
}
