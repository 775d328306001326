// SPDX-License-Identifier: MIT
// The Prometheus exposition (exact counters, escaping, family order) and the HTTP endpoint
// (200/404/405/400, bad listen specs), served by a loop on a background thread.
#include "bjd/metrics/metrics.hpp"

#include "bjd/block/driver.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/io/engine.hpp"
#include "bjd/io/huge_pages.hpp"
#include "bjd/jobs/job.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <stdexcept>
#include <string>
#include <thread>

using namespace bjd;

namespace {

bool has_line(const std::string& text, const std::string& line)
{
    return text.find("\n" + line + "\n") != std::string::npos || text.rfind(line + "\n", 0) == 0;
}

/// Sends `req` to 127.0.0.1:`port`, returns everything until the server closes.
std::string http_exchange(unsigned short port, const std::string& req)
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == ssize_t(req.size()));
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
        out.append(buf, std::size_t(n));
    ::close(fd);
    return out;
}

} // namespace

TEST_CASE("label values are escaped per the text format", "[metrics]")
{
    CHECK(metrics::escape_label("plain-name_1.x") == "plain-name_1.x");
    CHECK(metrics::escape_label("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
}

TEST_CASE("render: exact counters per node, families in order", "[metrics]")
{
    boost::asio::io_context io;
    auto eng = io::make_engine(io, io::backend::threads);
    block::graph g{*eng, *eng};
    block::node_options o;
    o.name = "n\"0";   // not a valid node-name, but it shows the escaping end to end
    auto n = block::open_null(o, "null-co", 1 << 20, 0, true);
    g.insert(n);
    stats::block_acct& acct = n->acct();
    acct.done(acct.start(stats::op::read, 4096));
    acct.done(acct.start(stats::op::read, 512));
    acct.failed(acct.start(stats::op::write, 8192));
    acct.invalid(stats::op::flush);
    acct.set_intervals(std::vector<std::uint32_t>{5});

    const std::string t = metrics::render(g, nullptr);
    CHECK(has_line(t, "bjd_rd_bytes_total{node=\"n\\\"0\"} 4608"));
    CHECK(has_line(t, "bjd_rd_operations_total{node=\"n\\\"0\"} 2"));
    CHECK(has_line(t, "bjd_wr_bytes_total{node=\"n\\\"0\"} 0"));
    CHECK(has_line(t, "bjd_failed_wr_operations_total{node=\"n\\\"0\"} 1"));
    CHECK(has_line(t, "bjd_invalid_flush_operations_total{node=\"n\\\"0\"} 1"));
    CHECK(has_line(t, "bjd_timed_rd_queue_depth{node=\"n\\\"0\",interval=\"5\"} 0"));
    CHECK(t.find("bjd_flush_bytes_total") == std::string::npos);
    // HELP then TYPE then the samples, for every family.
    auto help = t.find("# HELP bjd_rd_bytes_total ");
    auto type = t.find("# TYPE bjd_rd_bytes_total counter\n");
    auto sample = t.find("\nbjd_rd_bytes_total{");
    CHECK(help < type);
    CHECK(type < sample);
    CHECK(sample != std::string::npos);
    // No jobs: the job families are declared, without samples.
    CHECK(t.find("# TYPE bjd_job_current_progress_bytes gauge\n") != std::string::npos);
    CHECK(t.find("\nbjd_job_current_progress_bytes{") == std::string::npos);
    CHECK(t.find("# TYPE bjd_job_state gauge\n") != std::string::npos);
    CHECK(t.find("\nbjd_job_state{") == std::string::npos);
    // The node's driver and role, for sums that count each request once.
    CHECK(has_line(t, "bjd_node_info{node=\"n\\\"0\",driver=\"null-co\",role=\"protocol\"} 1"));
    // The build, always.
    CHECK(has_line(t, std::string("bjd_build_info{version=\"") + BJD_VERSION + "\",qemu_version=\"7.2\"} 1"));
    // No family uses OpenMetrics' reserved _created suffix.
    CHECK(t.find("_created") == std::string::npos);
    // The start time is the accounting's own, in seconds.
    auto st = acct.start_time_ns();
    CHECK(t.find("bjd_stats_start_time_seconds{node=\"n\\\"0\"} " + std::to_string(st / 1'000'000'000) + ".") !=
          std::string::npos);
    acct.set_intervals({});
}

TEST_CASE("render: the memory of large I/O buffers", "[metrics]")
{
    boost::asio::io_context io;
    auto eng = io::make_engine(io, io::backend::threads);
    block::graph g{*eng, *eng};
    void* p = io::huge_pages::allocate(1 << 20);
    REQUIRE(p);
    const io::huge_pages::usage u = io::huge_pages::current();
    const std::string t = metrics::render(g, nullptr);
    io::huge_pages::release(p, 1 << 20);
    CHECK(t.find("# TYPE bjd_io_buffer_memory_bytes gauge\n") != std::string::npos);
    CHECK(has_line(t, "bjd_io_buffer_memory_bytes " + std::to_string(u.mapped_bytes)));
    CHECK(has_line(t, "bjd_io_buffer_held_bytes " + std::to_string(u.held_bytes)));
    CHECK(u.held_bytes >= (1u << 20));
    // And back to what it was once the buffer is gone.
    const std::string after = metrics::render(g, nullptr);
    CHECK(has_line(after, "bjd_io_buffer_held_bytes " + std::to_string(u.held_bytes - (1u << 20))));
}

TEST_CASE("render: latency histograms as Prometheus histograms", "[metrics]")
{
    boost::asio::io_context io;
    auto eng = io::make_engine(io, io::backend::threads);
    block::graph g{*eng, *eng};
    block::node_options o;
    o.name = "h0";
    auto n = block::open_null(o, "null-co", 1 << 20, 0, true);
    g.insert(n);
    stats::block_acct& acct = n->acct();
    const std::uint64_t bounds[] = {1'000'000, 10'000'000'000};   // 1 ms, 10 s
    REQUIRE(acct.set_histogram(stats::op::read, bounds));
    // Latencies far from the boundaries (a request "started" 5 ms or 20 s ago), so that the
    // bins do not depend on how fast this machine is (the monotonic clock is past 20 s).
    auto started_ago = [&](std::int64_t ns) {
        auto c = acct.start(stats::op::read, 512);
        c.start_ns -= ns;
        return c;
    };
    acct.done(started_ago(5'000'000));
    acct.failed(started_ago(5'000'000));   // histograms count failed requests too
    acct.done(started_ago(20'000'000'000));

    const std::string t = metrics::render(g, nullptr);
    CHECK(t.find("# TYPE bjd_rd_latency_seconds histogram\n") != std::string::npos);
    CHECK(has_line(t, "bjd_rd_latency_seconds_bucket{node=\"h0\",le=\"0.001\"} 0"));
    CHECK(has_line(t, "bjd_rd_latency_seconds_bucket{node=\"h0\",le=\"10\"} 2"));
    CHECK(has_line(t, "bjd_rd_latency_seconds_bucket{node=\"h0\",le=\"+Inf\"} 3"));
    CHECK(has_line(t, "bjd_rd_latency_seconds_count{node=\"h0\"} 3"));
    // _sum: 20 s + 2 × 5 ms + the time the test itself took.
    auto at = t.find("\nbjd_rd_latency_seconds_sum{node=\"h0\"} ");
    REQUIRE(at != std::string::npos);
    double sum = std::stod(t.substr(t.find(' ', at + 1) + 1));
    CHECK(sum >= 20.01);
    CHECK(sum < 20.01 + 600);
    // Samples in order: buckets, then sum, then count; the start time in a gauge of its own,
    // not NAME_created (OpenMetrics' reserved suffix).
    CHECK(t.find("le=\"+Inf\"") < t.find("bjd_rd_latency_seconds_sum{"));
    CHECK(t.find("bjd_rd_latency_seconds_sum{") < t.find("bjd_rd_latency_seconds_count{"));
    auto created = acct.read().histograms[0]->start_time_ns;
    CHECK(t.find("bjd_rd_latency_histogram_start_time_seconds{node=\"h0\"} " + std::to_string(created / 1'000'000'000) +
                 ".") != std::string::npos);
    CHECK(t.find("# TYPE bjd_rd_latency_histogram_start_time_seconds gauge\n") != std::string::npos);
    CHECK(t.find("_created") == std::string::npos);
    // No write or flush histogram set: families declared, no samples.
    CHECK(t.find("# TYPE bjd_wr_latency_seconds histogram\n") != std::string::npos);
    CHECK(t.find("\nbjd_wr_latency_seconds_bucket{") == std::string::npos);
    CHECK(t.find("\nbjd_flush_latency_histogram_start_time_seconds{") == std::string::npos);
}

TEST_CASE("server: /metrics 200, other paths 404, methods 405, garbage 400", "[metrics]")
{
    boost::asio::io_context io;
    metrics::server srv(io, [] { return std::string("bjd_x_total 1\n"); });
    unsigned short port = srv.listen("tcp:127.0.0.1:0");
    REQUIRE(port != 0);
    auto guard = boost::asio::make_work_guard(io);
    std::thread loop([&] { io.run(); });

    std::string ok = http_exchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(ok.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    CHECK(ok.find("Content-Type: text/plain; version=0.0.4") != std::string::npos);
    CHECK(ok.find("Content-Length: 14\r\n") != std::string::npos);
    CHECK(ok.size() >= 14);
    CHECK(ok.substr(ok.size() - 14) == "bjd_x_total 1\n");
    std::string head = http_exchange(port, "HEAD /metrics HTTP/1.0\r\n\r\n");
    CHECK(head.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    CHECK(head.find("bjd_x_total") == std::string::npos);
    CHECK(http_exchange(port, "GET / HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404 ", 0) == 0);
    CHECK(http_exchange(port, "POST /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 405 ", 0) == 0);
    CHECK(http_exchange(port, "garbage\r\n\r\n").rfind("HTTP/1.1 400 ", 0) == 0);
    CHECK(http_exchange(port, "GET /metrics SMTP/1.1\r\n\r\n").rfind("HTTP/1.1 400 ", 0) == 0);
    CHECK(http_exchange(port, std::string(10000, 'A')).rfind("HTTP/1.1 400 ", 0) == 0);
    // Still serving after all that.
    CHECK(http_exchange(port, "GET /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 200 OK\r\n", 0) == 0);

    boost::asio::post(io, [&] { srv.stop(); guard.reset(); });
    loop.join();
}

TEST_CASE("server: bad listen specs are startup errors", "[metrics]")
{
    boost::asio::io_context io;
    metrics::server srv(io, [] { return std::string(); });
    CHECK_THROWS_AS(srv.listen("udp:1.2.3.4:5"), std::runtime_error);
    CHECK_THROWS_AS(srv.listen("tcp:localhost:9100"), std::runtime_error);   // numeric addresses only
    CHECK_THROWS_AS(srv.listen("tcp:127.0.0.1:99999"), std::runtime_error);
    CHECK_THROWS_AS(srv.listen("tcp:127.0.0.1"), std::runtime_error);
    CHECK_THROWS_AS(srv.listen("unix:/nonexistent-dir/m.sock"), std::runtime_error);
}
