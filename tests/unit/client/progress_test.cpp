// SPDX-License-Identifier: MIT
#include "bjd/client/format.hpp"
#include "bjd/client/progress.hpp"

#include <boost/json/parse.hpp>

#include <catch2/catch.hpp>

using namespace bjd::client;
namespace json = boost::json;

TEST_CASE("format: bytes and durations")
{
    CHECK(format_bytes(0) == "0 B");
    CHECK(format_bytes(1023) == "1023 B");
    CHECK(format_bytes(1536) == "1.50 KiB");
    CHECK(format_bytes(64 << 20) == "64.0 MiB");
    CHECK(format_bytes(1LL << 30) == "1.00 GiB");
    CHECK(format_bytes(500LL << 30) == "500 GiB");
    CHECK(format_duration(-1) == "--");
    CHECK(format_duration(7) == "7s");
    CHECK(format_duration(65) == "1m05s");
    CHECK(format_duration(7380) == "2h03m");
    CHECK(format_duration(3 * 86400 + 4 * 3600) == "3d04h");
}

TEST_CASE("format: pretty JSON")
{
    CHECK(pretty_json(json::parse(R"({"return":{}})")) == "{\n  \"return\": {}\n}");
    CHECK(pretty_json(json::parse(R"([1,[],{"a":"x\"y"}])")) == "[\n  1,\n  [],\n  {\n    \"a\": \"x\\\"y\"\n  }\n]");
}

TEST_CASE("progress: query-block-jobs and query-jobs merge by id")
{
    auto bj = json::parse(R"([{"type":"mirror","device":"m0","len":1000,"offset":250,"busy":true,"paused":false,
        "speed":0,"io-status":"ok","ready":false,"status":"running","auto-finalize":true,"auto-dismiss":true,
        "actively-synced":false,"dirty-bytes":750,"rate":100}])").as_array();
    auto jobs = json::parse(R"([{"id":"m0","type":"mirror","status":"running","current-progress":250,"total-progress":1000},
        {"id":"c0","type":"create","status":"concluded","current-progress":1,"total-progress":1,"error":"No space left on device"}])").as_array();
    auto v = merge_jobs(&bj, &jobs);
    REQUIRE(v.size() == 2);
    CHECK(v[0].id == "c0");
    CHECK(v[0].error == std::optional<std::string>("No space left on device"));
    CHECK_FALSE(v[0].dirty_bytes);
    CHECK(v[1].id == "m0");
    CHECK(v[1].done == 250);
    CHECK(v[1].total == 1000);
    CHECK(v[1].dirty_bytes == std::optional<std::int64_t>(750));
    CHECK(v[1].rate == std::optional<std::int64_t>(100));
    CHECK(v[1].actively_synced == std::optional<bool>(false));
    CHECK(merge_jobs(nullptr, nullptr).empty());
}

TEST_CASE("progress: rate estimate, ETA and lines")
{
    using namespace std::chrono_literals;
    rate_estimator r;
    auto t0 = rate_estimator::clock::now();
    r.sample("m0", 0, t0);
    CHECK_FALSE(r.rate("m0"));
    r.sample("m0", 100 << 20, t0 + 1s);
    REQUIRE(r.rate("m0"));
    CHECK(*r.rate("m0") == Approx(100 << 20));

    job_view j;
    j.id = "m0";
    j.type = "mirror";
    j.status = "running";
    j.done = 256 << 20;
    j.total = 1 << 30;
    j.dirty_bytes = 768 << 20;
    j.rate = 0;   // the server's: bytes written only; the estimate wins
    auto rate = effective_rate(j, r.rate("m0"));
    REQUIRE(rate);
    CHECK(*rate == Approx(100 << 20));
    CHECK(eta_seconds(j, rate) == std::optional<std::int64_t>(8));   // 768 MiB at 100 MiB/s
    CHECK(render_line(j, rate) ==
          "job=m0 type=mirror status=running offset=268435456 len=1073741824 rate=104857600 eta=8 dirty-bytes=805306368");
    std::string bar = render_bar(j, rate, 100);
    CHECK(bar.size() <= 100);
    CHECK(bar.starts_with("m0 mirror running ["));
    CHECK(bar.find("]  25.0% 256 MiB/1.00 GiB 100 MiB/s ETA 8s dirty 768 MiB") != std::string::npos);
    // A quarter of the bar is filled.
    auto open = bar.find('['), close = bar.find(']');
    std::string inside = bar.substr(open + 1, close - open - 1);
    CHECK(std::count(inside.begin(), inside.end(), '#') == static_cast<long>(inside.size() / 4 + (inside.size() % 4 >= 2)));
    // Narrower terminals lose the optional figures from the end first, then the bar.
    bar = render_bar(j, rate, 90);
    CHECK(bar.find('[') != std::string::npos);
    CHECK(bar.find(" dirty 768 MiB") != std::string::npos);
    CHECK(bar.size() <= 90);
    bar = render_bar(j, rate, 60);
    CHECK(bar.find('[') != std::string::npos);
    CHECK(bar.find("100 MiB/s") != std::string::npos);
    CHECK(bar.find("dirty") == std::string::npos);
    bar = render_bar(j, rate, 30);
    CHECK(bar.find('[') == std::string::npos);
    CHECK(bar == std::string("m0 mirror running  25.0% 256 MiB/1.00 GiB").substr(0, 30));

    j.status = "ready";
    CHECK_FALSE(eta_seconds(j, rate));
    CHECK(change_key(j) == "job=m0 type=mirror status=ready offset=268435456 len=1073741824 dirty-bytes=805306368");
    j.error = "Input/output error";
    CHECK(change_key(j).ends_with(" error=\"Input/output error\""));
    CHECK_FALSE(effective_rate(job_view{}, std::nullopt));
}
