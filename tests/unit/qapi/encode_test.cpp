// SPDX-License-Identifier: MIT
// Encoding and decode/encode round trips of generated types, and event emitters.
#include "bjd/qapi/events.hpp"
#include "bjd/qapi/types.hpp"

#include <catch2/catch.hpp>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <string>
#include <vector>

namespace json = boost::json;
using namespace bjd::qapi;

namespace {

/// decode then encode must give back the same JSON (member order aside).
template <class T>
void check_round_trip(std::string_view text)
{
    json::value in = json::parse(text);
    auto r = decode<T>(in);
    REQUIRE(r.has_value());
    json::value out = to_json(*r);
    INFO(json::serialize(out));
    CHECK(out == in);
    auto again = decode<T>(out);
    REQUIRE(again.has_value());
    CHECK(*again == *r);
}

class recording_sink : public event_sink {
public:
    void emit(std::string_view event, json::object data) override
    {
        events.emplace_back(std::string(event), std::move(data));
    }
    std::vector<std::pair<std::string, json::object>> events;
};

} // namespace

TEST_CASE("qapi: blockdev options round trip through every branch", "[qapi]")
{
    check_round_trip<blockdev_options>(
        R"({"driver":"file","node-name":"f","filename":"/x","aio":"io_uring",
            "locking":"off","aio-max-batch":16,"drop-cache":false,
            "cache":{"direct":true,"no-flush":false},"read-only":true,
            "auto-read-only":false,"force-share":true,"detect-zeroes":"unmap","discard":"unmap"})");
    check_round_trip<blockdev_options>(
        R"({"driver":"null-co","node-name":"n","size":1048576,"latency-ns":0,"read-zeroes":true})");
    check_round_trip<blockdev_options>(R"({"driver":"null-aio","node-name":"n"})");
    check_round_trip<blockdev_options>(
        R"({"driver":"raw","node-name":"r","offset":512,"size":4096,
            "file":{"driver":"file","filename":"/x","node-name":"child"}})");
    check_round_trip<blockdev_options>(R"({"driver":"raw","node-name":"r","file":"child"})");
}

TEST_CASE("qapi: absent optionals are omitted and branches are flattened", "[qapi]")
{
    blockdev_options o;
    o.driver = blockdev_driver::null_co;
    o.node_name = "n";
    o.u.null_co.emplace().size = 512;
    CHECK(to_json(o) == json::parse(R"({"driver":"null-co","node-name":"n","size":512})"));

    // The branch follows the discriminator: members of other branches are not written.
    o.u.file.emplace().filename = "/ignored";
    CHECK(to_json(o) == json::parse(R"({"driver":"null-co","node-name":"n","size":512})"));
}

TEST_CASE("qapi: recursive members are boxed and round trip", "[qapi]")
{
    check_round_trip<image_info>(
        R"({"filename":"top.qcow2","format":"qcow2","virtual-size":1024,
            "backing-filename":"base.raw",
            "backing-image":{"filename":"base.raw","format":"raw","virtual-size":1024,
                             "backing-image":{"filename":"b2","format":"raw","virtual-size":1}}})");
    image_info top;
    top.filename = "t";
    top.backing_image = box<image_info>(image_info{.filename = "b"});
    image_info copy = top;                         // deep copy
    (*copy.backing_image)->filename = "changed";
    CHECK((*top.backing_image)->filename == "b");
}

TEST_CASE("qapi: query results encode every required member", "[qapi]")
{
    block_device_info info;
    info.file = "/x";
    info.node_name = "n";
    info.drv = "file";
    info.detect_zeroes = blockdev_detect_zeroes_options::off;
    info.image.filename = "/x";
    info.image.format = "file";
    info.image.virtual_size = 4096;
    info.cache.writeback = true;
    json::value v = to_json(info);
    const json::object& o = v.as_object();
    for (const char* k : {"file", "node-name", "ro", "drv", "backing_file_depth", "encrypted",
                          "detect_zeroes", "bps", "bps_rd", "bps_wr", "iops", "iops_rd",
                          "iops_wr", "image", "cache", "write_threshold"})
        CHECK(o.contains(k));
    CHECK_FALSE(o.contains("backing_file"));
    CHECK(o.at("detect_zeroes") == "off");
    CHECK(o.at("cache") == json::parse(R"({"writeback":true,"direct":false,"no-flush":false})"));
    CHECK(decode<block_device_info>(v).has_value());
}

TEST_CASE("qapi: version info has QEMU's shape", "[qapi]")
{
    version_info vi{.qemu = {.major = 7, .minor = 2, .micro = 0}, .package = "blockjobd"};
    CHECK(to_json(vi)
          == json::parse(R"({"qemu":{"major":7,"minor":2,"micro":0},"package":"blockjobd"})"));
}

TEST_CASE("qapi: integers encode with their signedness", "[qapi]")
{
    CHECK(to_json(std::uint64_t{UINT64_MAX}).is_uint64());
    CHECK(to_json(std::int64_t{-1}).is_int64());
    CHECK(to_json(std::uint32_t{7}).is_uint64());
    CHECK(to_json(std::int8_t{-7}) == -7);
    CHECK(to_json(2.5).is_double());
}

TEST_CASE("qapi: emitters send the wire name and the encoded payload", "[qapi]")
{
    recording_sink sink;
    emit_job_status_change(sink, {.id = "job0", .status = job_status::concluded});
    REQUIRE(sink.events.size() == 1);
    CHECK(sink.events[0].first == "JOB_STATUS_CHANGE");
    CHECK(sink.events[0].second == json::parse(R"({"id":"job0","status":"concluded"})").as_object());
}
