// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Helpers for the qcow2 tests: a loop with a thread-pool engine, a scratch directory, shell
/// calls to qemu-img/qemu-io, and opening images as file + format nodes.
#include "bjd/block/driver.hpp"
#include "bjd/io/engine.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include "check_result.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace bjd::block::test {

namespace asio = boost::asio;

using bjd::test::ok;

/// Runs `cmd` with /bin/sh; returns its exit status (stdout/stderr to `out` when given).
inline int sh(const std::string& cmd, std::string* out = nullptr)
{
    std::string full = cmd + " 2>&1";
    FILE* p = ::popen(full.c_str(), "r");
    REQUIRE(p);
    std::string text;
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p))
        text.append(buf, n);
    int st = ::pclose(p);
    if (out)
        *out = text;
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (rc != 0)
        UNSCOPED_INFO("command: " << cmd << "\n" << text);
    return rc;
}

inline std::vector<std::byte> slurp(const std::string& path)
{
    std::ifstream f(path, std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(c.size());
    std::memcpy(out.data(), c.data(), c.size());
    return out;
}

inline void spit(const std::string& path, std::span<const std::byte> data)
{
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

/// One loop, one thread-pool engine, one scratch directory.
struct env {
    asio::io_context ctx;
    std::unique_ptr<io::engine> eng;
    std::string dir;
    unsigned counter = 0;

    env()
    {
        eng = io::make_engine(ctx, io::backend::threads);
        char tmpl[] = "/var/tmp/bjd-qcow2-XXXXXX";
        REQUIRE(::mkdtemp(tmpl));
        dir = tmpl;
    }
    ~env()
    {
        run_void(eng->drain());
        eng.reset();
        sh("rm -rf '" + dir + "'");
    }

    std::string path(const std::string& name) const { return dir + "/" + name; }

    template <class T>
    T run(asio::awaitable<T> a)
    {
        std::optional<T> out;
        std::exception_ptr ep;
        asio::co_spawn(ctx, std::move(a), [&](std::exception_ptr e, T v) {
            ep = e;
            if (!e)
                out.emplace(std::move(v));
        });
        ctx.restart();
        ctx.run_for(std::chrono::seconds(120));
        if (ep)
            std::rethrow_exception(ep);
        REQUIRE(out.has_value());
        return std::move(*out);
    }
    void run_void(asio::awaitable<void> a)
    {
        bool done = false;
        asio::co_spawn(ctx, std::move(a), [&](std::exception_ptr) { done = true; });
        ctx.restart();
        ctx.run_for(std::chrono::seconds(120));
        REQUIRE(done);
    }

    node_options opts(bool ro, bool unmap = true)
    {
        node_options o;
        o.name = "n" + std::to_string(counter++);
        o.read_only = ro;
        o.discard_unmap = unmap;
        return o;
    }

    qapi::result<std::shared_ptr<node>> file(const std::string& p, bool ro)
    {
        file_open_options fo;
        fo.filename = p;
        fo.use_uring = false;
        return open_file(opts(ro), fo, *eng);
    }

    /// Opens `p` as qcow2 (no backing attached). Errors as the driver reports them.
    qapi::result<std::shared_ptr<node>> qcow2(const std::string& p, bool ro = false, qcow2_open_options qo = {})
    {
        auto f = file(p, ro);
        if (!f)
            return f.error();
        return run(open_qcow2(opts(ro), *f, qo));
    }

    std::shared_ptr<node> raw(const std::string& p, bool ro = true)
    {
        auto f = file(p, ro);
        REQUIRE(ok(f));
        auto r = open_raw(opts(ro), *f, 0, std::nullopt);
        REQUIRE(ok(r));
        return *r;
    }
};

/// Passes every request to its "file" child unchanged: the base of test nodes slipped
/// between a format and its file to watch or hold what the format does there.
class forwarding_node : public node {
public:
    forwarding_node(node_options o, std::shared_ptr<node> f) : node(std::move(o)) { add_child("file", std::move(f)); }
    std::string_view driver() const noexcept override { return "raw"; }
    std::uint64_t size() const noexcept override { return file()->size(); }

protected:
    node* file() const noexcept { return child("file"); }

    asio::awaitable<result<void>> do_read(std::uint64_t off, std::span<std::byte> buf) override
    {
        co_return co_await file()->read(off, buf);
    }
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool fua) override
    {
        co_return co_await file()->write(off, buf, fua);
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t off, std::uint64_t len, zero_flags f) override
    {
        co_return co_await file()->write_zeroes(off, len, f);
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t off, std::uint64_t len) override
    {
        co_return co_await file()->discard(off, len);
    }
    asio::awaitable<result<void>> do_flush() override { co_return co_await file()->flush(); }
    asio::awaitable<result<void>> do_truncate(std::uint64_t size) override
    {
        co_return co_await file()->truncate(size);
    }
};

} // namespace bjd::block::test
