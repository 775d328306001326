// SPDX-License-Identifier: MIT
#include "bjd/log.hpp"

#include <catch2/catch.hpp>

#include "skip.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

using namespace bjd;

namespace {

/// What the process writes to stderr while `f` runs.
template <class F>
std::string capture_stderr(F f)
{
    std::fflush(stderr);
    char path[] = "/tmp/bjd-log-XXXXXX";
    int tmp = ::mkstemp(path);
    REQUIRE(tmp >= 0);
    int saved = ::dup(2);
    ::dup2(tmp, 2);
    f();
    spdlog::apply_all([](const std::shared_ptr<spdlog::logger>& l) { l->flush(); });
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    ::close(tmp);
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    ::unlink(path);
    return ss.str();
}

} // namespace

TEST_CASE("terminal style appends structured fields to the line", "[log]")
{
    log::init_logging(spdlog::level::info, log::style::terminal);
    auto out = capture_stderr([] {
        log::with_fields(spdlog::level::info, "jobs", "job 'm0': running -> ready",
                         {{"JOB_ID", "m0"}, {"JOB_STATUS", "ready"}});
        log::with_fields(spdlog::level::debug, "jobs", "not shown", {{"JOB_ID", "m0"}});
    });
    CHECK(out.find("jobs: job 'm0': running -> ready [JOB_ID=m0] [JOB_STATUS=ready]") != std::string::npos);
    CHECK(out.find("not shown") == std::string::npos);
}

TEST_CASE("journal style sends the fields to journald natively", "[log][may-skip]")
{
    const char* jpath = "/run/systemd/journal/socket";
    if (std::filesystem::exists(jpath)) {
        bjd::test::skip("a journald runs here; not replacing its socket, so the native path is not checked");
        return;
    }
    std::filesystem::create_directories("/run/systemd/journal");
    int s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(s >= 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::strcpy(sun.sun_path, jpath);
    if (::bind(s, reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0) {
        ::close(s);
        bjd::test::skip(std::string("cannot bind ") + jpath + " (" + std::strerror(errno) + "); native path not checked");
        return;
    }
    log::init_logging(spdlog::level::info, log::style::journal);
    auto out = capture_stderr([] {
        log::with_fields(spdlog::level::warn, "jobs", "job 'm0' failed: Input/output error",
                         {{"JOB_ID", "m0"}, {"ERRNO", "EIO"}});
    });
    char buf[4096] = {};
    timeval tv{5, 0};
    ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n = ::recv(s, buf, sizeof buf - 1, 0);
    ::close(s);
    ::unlink(jpath);
    log::init_logging(spdlog::level::info, log::style::terminal);
    REQUIRE(n > 0);
    std::string d(buf, static_cast<std::size_t>(n));
    CHECK(d.find("MESSAGE=jobs: job 'm0' failed: Input/output error\n") != std::string::npos);
    CHECK(d.find("PRIORITY=4\n") != std::string::npos);
    CHECK(d.find("JOB_ID=m0\n") != std::string::npos);
    CHECK(d.find("ERRNO=EIO\n") != std::string::npos);
    CHECK(d.find("SYSLOG_IDENTIFIER=blockjobd\n") != std::string::npos);
    CHECK(out.empty());   // sent once, natively, not also to the stream
}

TEST_CASE("journal style without journald falls back to the stream with a priority prefix", "[log][may-skip]")
{
    if (std::filesystem::exists("/run/systemd/journal/socket")) {
        bjd::test::skip("a journald runs here; the fallback is not reachable");
        return;
    }
    log::init_logging(spdlog::level::info, log::style::journal);
    auto out = capture_stderr([] { log::with_fields(spdlog::level::err, "nbd", "gone", {{"NODE", "disk0"}}); });
    log::init_logging(spdlog::level::info, log::style::terminal);
    CHECK(out == "<3>nbd: gone [NODE=disk0]\n");
}
