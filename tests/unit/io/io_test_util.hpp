// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Helpers for the io engine tests: run a coroutine to completion, temp files, O_DIRECT
/// directory detection, and engines that skip visibly when io_uring is refused.
#include "bjd/io/engine.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <catch2/catch.hpp>

#include "skip.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <vector>

namespace bjd::io::test {

namespace asio = boost::asio;

/// Runs the loop until it runs out of work. Requires that the loop stops by itself (an idle
/// engine must not keep it alive) within a generous time limit.
inline void run_loop(asio::io_context& ctx)
{
    ctx.restart();
    ctx.run_for(std::chrono::seconds(60));
    REQUIRE(ctx.stopped());
}

/// Runs `a` on `ctx` to completion and returns its value; rethrows its exception.
template <class T>
T run(asio::io_context& ctx, asio::awaitable<T> a)
{
    std::optional<T> out;
    std::exception_ptr ep;
    asio::co_spawn(ctx, std::move(a), [&](std::exception_ptr e, T v) {
        ep = e;
        if (!e)
            out.emplace(std::move(v));
    });
    run_loop(ctx);
    if (ep)
        std::rethrow_exception(ep);
    REQUIRE(out.has_value());
    return std::move(*out);
}

inline void run(asio::io_context& ctx, asio::awaitable<void> a)
{
    bool done = false;
    std::exception_ptr ep;
    asio::co_spawn(ctx, std::move(a), [&](std::exception_ptr e) {
        ep = e;
        done = true;
    });
    run_loop(ctx);
    if (ep)
        std::rethrow_exception(ep);
    REQUIRE(done);
}

/// A file created in `dir` (mkstemp), removed with its descriptor on destruction.
struct temp_file {
    std::string path;
    int fd = -1;

    explicit temp_file(const std::string& dir = "/var/tmp", int extra_flags = 0)
    {
        std::vector<char> name(dir.begin(), dir.end());
        for (char c : std::string("/bjd-io-test-XXXXXX"))
            name.push_back(c);
        name.push_back('\0');
        int tmp = ::mkstemp(name.data());
        REQUIRE(tmp >= 0);
        path = name.data();
        if (extra_flags) {
            fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | extra_flags);
            ::close(tmp);
        } else {
            fd = tmp;
        }
    }
    ~temp_file()
    {
        if (fd >= 0)
            ::close(fd);
        ::unlink(path.c_str());
    }
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;
};

/// A directory whose file system accepts O_DIRECT, or "" when none does. tmpfs refused
/// O_DIRECT before Linux 6.6, so try BJD_TEST_DIR, /var/tmp, the working directory, /tmp.
inline std::string direct_io_dir()
{
    std::vector<std::string> dirs;
    if (const char* d = std::getenv("BJD_TEST_DIR"))
        dirs.emplace_back(d);
    dirs.insert(dirs.end(), {"/var/tmp", ".", "/tmp"});
    for (const auto& d : dirs) {
        std::string name = d + "/bjd-direct-probe-XXXXXX";
        int tmp = ::mkstemp(name.data());
        if (tmp < 0)
            continue;
        int fd = ::open(name.c_str(), O_RDWR | O_DIRECT);
        bool ok = false;
        if (fd >= 0) {
            void* p = std::aligned_alloc(4096, 4096);
            ok = ::pwrite(fd, p, 4096, 0) == 4096;
            std::free(p);
            ::close(fd);
        }
        ::close(tmp);
        ::unlink(name.c_str());
        if (ok)
            return d;
    }
    return {};
}

/// The engine for `b`, or null (the test case skipped, see skip.hpp) when the kernel refuses io_uring.
inline std::unique_ptr<engine> open_engine(asio::io_context& ctx, backend b, const engine_options& opts = {})
{
    std::string why;
    auto e = make_engine(ctx, b, opts, &why);
    REQUIRE(e);
    if (e->kind() != b) {
        bjd::test::skip("io_uring refused by the kernel: " + why);
        return nullptr;
    }
    return e;
}

} // namespace bjd::io::test
