// SPDX-License-Identifier: MIT
#include "bjd/chardev/base64.hpp"
#include "bjd/chardev/registry.hpp"
#include "bjd/chardev/ringbuf.hpp"

#include "check_result.hpp"

#include <catch2/catch.hpp>

using namespace bjd::chardev;


using bjd::test::ok;

TEST_CASE("ringbuf keeps the newest bytes and reads consume")
{
    ringbuf rb(8);
    CHECK(rb.available() == 0);
    CHECK(rb.read(4).empty());
    rb.write(std::string_view("abc"));
    CHECK(rb.available() == 3);
    CHECK(rb.read(2) == "ab");
    CHECK(rb.read(10) == "c");
    rb.write(std::string_view("0123456789"));   // overflow: 8 kept
    CHECK(rb.available() == 8);
    CHECK(rb.read(100) == "23456789");
    // Wrap-around several times with partial reads in between.
    for (int i = 0; i < 5; ++i) {
        rb.write(std::string_view("xyz"));
        CHECK(rb.read(1) == "x");
        CHECK(rb.read(5) == "yz");
    }
    rb.write(std::string_view("abcdefgh"));
    rb.write(std::string_view("IJ"));
    CHECK(rb.read(100) == "cdefghIJ");
}

TEST_CASE("ringbuf stores binary data, NUL included")
{
    ringbuf rb(4);
    const std::string bin("\0\x01\xff", 3);
    rb.write(bin);
    CHECK(rb.read(4) == bin);
}

TEST_CASE("power of two sizes")
{
    CHECK(is_power_of_two(1));
    CHECK(is_power_of_two(65536));
    CHECK_FALSE(is_power_of_two(0));
    CHECK_FALSE(is_power_of_two(-4));
    CHECK_FALSE(is_power_of_two(3));
    CHECK_FALSE(is_power_of_two(6));
}

TEST_CASE("registry: creation rules and lookups")
{
    registry r;
    REQUIRE(ok(r.add_ringbuf("r0", 16)));
    auto dup = r.add_ringbuf("r0", 16);
    REQUIRE_FALSE(ok(dup));
    CHECK(dup.error().desc == "Chardev with id 'r0' already exists");
    for (std::int64_t bad : {0, -1, 3, 100}) {
        auto e = r.add_ringbuf("r1", bad);
        REQUIRE_FALSE(ok(e));
        CHECK(e.error().desc == "Failed to add chardev 'r1': size of ringbuf chardev must be power of two");
    }
    REQUIRE(ok(r.add_socket("qmp0", "unix:/x,server=on")));
    CHECK(r.find_ringbuf("nope").error().desc == "Device 'nope' not found");
    CHECK(r.find_ringbuf("qmp0").error().desc == "qmp0 is not a ringbuf device");
    REQUIRE(ok(r.find_ringbuf("r0")));
    CHECK(r.remove("qmp0").error().desc == "Chardev 'qmp0' is busy");
    auto q = r.query();
    REQUIRE(q.size() == 2);
    CHECK(q[0].label == "qmp0");
    CHECK(q[0].frontend_open);
    CHECK(q[1].filename == "ringbuf");
    CHECK_FALSE(q[1].frontend_open);
    REQUIRE(ok(r.remove("r0")));
    CHECK(r.remove("r0").error().desc == "Chardev 'r0' not found");
    REQUIRE(ok(r.add_ringbuf("m", 8, true)));
    CHECK(r.query()[0].filename == "memory");
}
