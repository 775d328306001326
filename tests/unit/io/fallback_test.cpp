// SPDX-License-Identifier: MIT
// Backend choice: the io_uring probe, BJD_FORCE_URING_FAILURE, and the loud fallback to threads.
#include "bjd/io/engine.hpp"

#include "bjd/log.hpp"
#include "io_test_util.hpp"

#include <spdlog/sinks/ringbuffer_sink.h>

#include <cstdlib>
#include <cstring>
#include <vector>

using namespace bjd;
using namespace bjd::io;
using namespace bjd::io::test;

namespace {

/// Sets an environment variable for one scope.
class env_override {
public:
    env_override(const char* name, const char* value)
        : name_(name)
    {
        ::setenv(name, value, 1);
    }
    ~env_override() { ::unsetenv(name_); }

private:
    const char* name_;
};

/// Captures what the "io" logger prints for one scope.
class log_capture {
public:
    log_capture()
        : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(32))
        , logger_(log::get("io"))
    {
        logger_->sinks().push_back(sink_);
    }
    ~log_capture() { logger_->sinks().pop_back(); }
    std::string text() const
    {
        std::string all;
        for (const auto& l : sink_->last_formatted())
            all += l;
        return all;
    }

private:
    std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
    std::shared_ptr<spdlog::logger> logger_;
};

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

asio::awaitable<std::size_t> roundtrip(engine* e, int fd)
{
    std::vector<std::byte> out(4096, std::byte{0x5a}), in(4096);
    if (!co_await e->write(fd, out, 0))
        co_return 0;
    auto n = co_await e->read(fd, in, 0);
    co_return n && in == out ? *n : 0;
}

} // namespace

TEST_CASE("io: backend wire names", "[io]")
{
    CHECK(std::strcmp(to_string(backend::io_uring), "io_uring") == 0);
    CHECK(std::strcmp(to_string(backend::threads), "threads") == 0);
}

TEST_CASE("io: probe finds io_uring on this machine", "[io][uring][may-skip]")
{
    ::unsetenv("BJD_FORCE_URING_FAILURE");
    auto p = probe_io_uring();
    if (!p.usable) {
        bjd::test::skip("io_uring refused by the kernel: " + p.reason);
        CHECK(p.error != 0);
        CHECK_FALSE(p.reason.empty());
        return;
    }
    CHECK(p.error == 0);
    CHECK(p.reason.empty());
}

TEST_CASE("io: forced EPERM explains kernel.io_uring_disabled and falls back loudly", "[io]")
{
    env_override force("BJD_FORCE_URING_FAILURE", "EPERM");
    auto p = probe_io_uring();
    CHECK_FALSE(p.usable);
    CHECK(p.error == EPERM);
    CHECK(contains(p.reason, "io_uring_disabled"));
    CHECK(contains(p.reason, "aio=threads"));
    CHECK(contains(p.reason, "BJD_FORCE_URING_FAILURE"));

    asio::io_context ctx;
    log_capture logs;
    std::string why;
    auto e = make_engine(ctx, backend::io_uring, {}, &why);
    REQUIRE(e);
    CHECK(e->kind() == backend::threads);
    CHECK(contains(why, "io_uring_disabled"));
    CHECK(contains(logs.text(), "falling back to aio=threads"));
    CHECK(contains(logs.text(), "io_uring_disabled"));

    // The fallback engine really works.
    temp_file f;
    CHECK(run(ctx, roundtrip(e.get(), f.fd)) == 4096);
}

TEST_CASE("io: forced ENOSYS names seccomp", "[io]")
{
    env_override force("BJD_FORCE_URING_FAILURE", "ENOSYS");
    auto p = probe_io_uring();
    CHECK_FALSE(p.usable);
    CHECK(p.error == ENOSYS);
    CHECK(contains(p.reason, "seccomp"));

    asio::io_context ctx;
    std::string why;
    auto e = make_engine(ctx, backend::io_uring, {}, &why);
    CHECK(e->kind() == backend::threads);
    CHECK(contains(why, "seccomp"));
}

TEST_CASE("io: asking for threads is not a fallback", "[io]")
{
    env_override force("BJD_FORCE_URING_FAILURE", "EPERM");
    asio::io_context ctx;
    std::string why = "untouched";
    auto e = make_engine(ctx, backend::threads, {}, &why);
    CHECK(e->kind() == backend::threads);
    CHECK(why == "untouched");
}

TEST_CASE("io: without the hook, io_uring is used when the kernel allows it", "[io][uring][may-skip]")
{
    ::unsetenv("BJD_FORCE_URING_FAILURE");
    asio::io_context ctx;
    std::string why;
    auto e = make_engine(ctx, backend::io_uring, {}, &why);
    if (e->kind() != backend::io_uring) {
        bjd::test::skip("io_uring refused by the kernel: " + why);
        CHECK_FALSE(why.empty());
        return;
    }
    CHECK(why.empty());
    INFO("ring setup flags " << e->stats().setup_flags);
    temp_file f;
    CHECK(run(ctx, roundtrip(e.get(), f.fd)) == 4096);
}
