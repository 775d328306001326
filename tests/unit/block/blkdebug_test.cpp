// SPDX-License-Identifier: MIT
// blkdebug's rules (QEMU 7.2 semantics): which requests fail, with which errno, and when a
// rule stops applying (once, the next event with error rules, states); option errors.
#include "bjd/block/driver.hpp"
#include "bjd/qapi/types.hpp"

#include <boost/asio/io_context.hpp>

#include "run_request.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <unistd.h>

using namespace bjd;
using namespace bjd::block;
namespace asio = boost::asio;
using ev = qapi::blkdebug_event;
using iot = qapi::blkdebug_io_type;

namespace {

/// A RAM node that counts the requests reaching it.
class mem_node final : public node {
public:
    explicit mem_node(std::size_t size) : node("mem", false), data_(size, '\0') {}
    std::string_view driver() const noexcept override { return "mem"; }
    std::string filename() const override { return "/mem"; }
    std::uint64_t size() const noexcept override { return data_.size(); }
    int reads = 0, writes = 0, flushes = 0;

protected:
    asio::awaitable<result<void>> do_read(std::uint64_t off, std::span<std::byte> buf) override
    {
        ++reads;
        std::memcpy(buf.data(), data_.data() + off, buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool) override
    {
        ++writes;
        std::memcpy(data_.data() + off, buf.data(), buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_flush() override
    {
        ++flushes;
        co_return result<void>{};
    }

private:
    std::string data_;
};

qapi::blkdebug_inject_error_options inject(ev e)
{
    qapi::blkdebug_inject_error_options r;
    r.event = e;
    return r;
}

struct fixture {
    asio::io_context loop;
    std::shared_ptr<mem_node> mem = std::make_shared<mem_node>(1 << 20);
    qapi::blockdev_options_blkdebug opts;
    std::shared_ptr<node> dbg;
    std::shared_ptr<node> top;   ///< raw over dbg: QEMU fires read_aio/write_aio from a format node

    fixture() { opts.image = std::string("mem"); }

    qapi::result<std::shared_ptr<node>> try_open()
    {
        node_options o;
        o.name = "dbg";
        return open_blkdebug(o, mem, opts);
    }
    void open()
    {
        auto r = try_open();
        if (!r)
            FAIL("open: " << r.error().desc);
        dbg = *r;
        node_options o;
        o.name = "top";
        auto t = open_raw(o, dbg, 0, std::nullopt);
        REQUIRE(t.has_value());
        top = *t;
    }

    /// Runs one request to completion: 0 or its errno.
    template <class T>
    int run(asio::awaitable<result<T>> a)
    {
        return bjd::test::run_request(loop, std::move(a));
    }
    int read(std::uint64_t off, std::size_t len = 4096)
    {
        buf.resize(len);
        return run(top->read(off, std::span<std::byte>(buf)));
    }
    int write(std::uint64_t off, std::size_t len = 4096)
    {
        buf.assign(len, std::byte{0x5a});
        return run(top->write(off, std::span<const std::byte>(buf)));
    }
    int flush() { return run(top->flush()); }
    int status(std::uint64_t off) { return run(top->block_status(off, 4096)); }
    /// The same requests straight to the blkdebug node (no format node above).
    int read_direct(std::uint64_t off)
    {
        buf.resize(4096);
        return run(dbg->read(off, std::span<std::byte>(buf)));
    }
    int write_direct(std::uint64_t off)
    {
        buf.assign(4096, std::byte{0x5a});
        return run(dbg->write(off, std::span<const std::byte>(buf)));
    }

    std::vector<std::byte> buf;
};

} // namespace

TEST_CASE_METHOD(fixture, "blkdebug without rules passes everything to its image")
{
    open();
    CHECK(dbg->driver() == "blkdebug");
    CHECK(dbg->size() == mem->size());
    CHECK(dbg->filename() == "blkdebug::/mem");
    CHECK(write(0) == 0);
    CHECK(read(0) == 0);
    CHECK(flush() == 0);
    CHECK(mem->reads == 1);
    CHECK(mem->writes == 1);
    CHECK(mem->flushes == 1);
}

TEST_CASE_METHOD(fixture, "a sector rule fails only requests covering that sector, with EIO by default")
{
    auto r = inject(ev::read_aio);
    r.sector = 16;   // byte 8192
    opts.inject_error = {r};
    open();
    CHECK(read(0) == 0);            // [0, 4096)
    CHECK(read(4096) == 0);         // [4096, 8192): ends right before the sector
    CHECK(read(8192) == EIO);       // starts at it
    CHECK(read(4096, 8192) == EIO); // covers it
    CHECK(read(8192 + 512) == 0);   // starts after it
    CHECK(mem->reads == 3);         // failed requests never reach the image
}

TEST_CASE_METHOD(fixture, "errno, once, and rules without an error")
{
    SECTION("errno")
    {
        auto r = inject(ev::read_aio);
        r.errno_ = 28;
        opts.inject_error = {r};
        open();
        CHECK(read(0) == ENOSPC);
        CHECK(read(0) == ENOSPC);   // once defaults to false
    }
    SECTION("once")
    {
        auto r = inject(ev::read_aio);
        r.once = true;
        r.immediately = true;
        opts.inject_error = {r};
        open();
        CHECK(read(0) == EIO);
        CHECK(read(0) == 0);
    }
    SECTION("errno 0 lets the request through")
    {
        auto r = inject(ev::read_aio);
        r.errno_ = 0;
        opts.inject_error = {r};
        open();
        CHECK(read(0) == 0);
    }
    SECTION("a negative sector other than -1 never matches")
    {
        auto r = inject(ev::read_aio);
        r.sector = -5;
        opts.inject_error = {r};
        open();
        CHECK(read(0) == 0);
    }
}

TEST_CASE_METHOD(fixture, "an active rule fails every kind in its mask until another event with error rules fires")
{
    SECTION("default mask: a read_aio rule also fails later writes and flushes, not block-status")
    {
        opts.inject_error = {inject(ev::read_aio)};
        open();
        CHECK(write(0) == 0);       // no read yet: nothing is active
        CHECK(read(0) == EIO);
        CHECK(write(0) == EIO);     // write_aio has no rules: the read rule stays active
        CHECK(flush() == EIO);
        CHECK(status(0) == 0);
    }
    SECTION("iotype narrows the rule to one kind")
    {
        auto r = inject(ev::read_aio);
        r.iotype = iot::write;
        opts.inject_error = {r};
        open();
        CHECK(read(0) == 0);
        CHECK(write(0) == EIO);
    }
    SECTION("block-status only when asked for")
    {
        auto r = inject(ev::read_aio);
        r.iotype = iot::block_status;
        opts.inject_error = {r};
        open();
        CHECK(read(0) == 0);
        CHECK(status(0) == EIO);
    }
    SECTION("the next event with error rules replaces the active set")
    {
        auto a = inject(ev::read_aio);
        a.iotype = iot::write;
        auto b = inject(ev::write_aio);
        b.iotype = iot::read;
        b.errno_ = 28;
        opts.inject_error = {a, b};
        open();
        CHECK(read(0) == 0);        // active: a (writes only)
        CHECK(write(0) == 0);       // write_aio fired first: active is b (reads only)
        CHECK(read(0) == 0);        // read_aio: active is a again
        CHECK(write(0) == 0);
    }
    SECTION("the first matching rule in definition order decides")
    {
        auto a = inject(ev::read_aio);
        a.sector = 0;
        a.errno_ = 28;
        auto b = inject(ev::read_aio);
        b.errno_ = 5;
        opts.inject_error = {a, b};
        open();
        CHECK(read(0) == ENOSPC);
        CHECK(read(8192) == EIO);
    }
}

TEST_CASE_METHOD(fixture, "read_aio and write_aio fire only below a format node, pwritev always")
{
    auto r = inject(ev::read_aio);
    r.iotype = iot::read;
    auto w = inject(ev::write_aio);
    w.iotype = iot::write;
    w.sector = 0;
    auto p = inject(ev::pwritev);
    p.iotype = iot::write;
    p.sector = 8;
    opts.inject_error = {r, w, p};
    open();
    auto raw = top;
    top.reset();
    raw.reset();                        // no format node above: read_aio/write_aio never fire
    CHECK(read_direct(0) == 0);
    CHECK(write_direct(0) == 0);        // only pwritev fired: its rule covers sector 8
    CHECK(write_direct(4096) == EIO);
    node_options o;
    o.name = "top";
    top = *open_raw(o, dbg, 0, std::nullopt);
    CHECK(read(0) == EIO);
    CHECK(write(0) == 0);               // write_aio's rule, then pwritev's replaced it
}

TEST_CASE_METHOD(fixture, "states: rules apply in their state, set-state moves after the event")
{
    auto r = inject(ev::read_aio);
    r.state = 2;
    opts.inject_error = {r};
    qapi::blkdebug_set_state_options s;
    s.event = ev::write_aio;
    s.new_state = 2;
    opts.set_state = {s};
    open();
    CHECK(read(0) == 0);            // the daemon starts in state 1
    CHECK(write(0) == 0);           // -> state 2
    CHECK(read(0) == EIO);
}

TEST_CASE_METHOD(fixture, "flush rules: flush_to_disk fires only when something was written since the last flush")
{
    auto r = inject(ev::flush_to_disk);
    r.iotype = iot::flush;
    r.once = true;
    opts.inject_error = {r};
    open();
    CHECK(flush() == 0);            // nothing written: no flush_to_disk, nothing reaches the image
    CHECK(mem->flushes == 0);
    CHECK(write(0) == 0);
    CHECK(flush() == EIO);
    CHECK(flush() == 0);            // once: the retry flushes
    CHECK(mem->flushes == 1);
}

TEST_CASE_METHOD(fixture, "option errors use QEMU's words")
{
    SECTION("align")
    {
        opts.align = 3;
        CHECK(try_open().error().desc == "Cannot meet constraints with align 3");
        opts.align = -4;
        CHECK(try_open().error().desc == "Parameter 'align' expects a non-negative number below 2^64");
    }
    SECTION("max-transfer must be a multiple of the alignment")
    {
        opts.align = 4096;
        opts.max_transfer = 1024;
        CHECK(try_open().error().desc == "Cannot meet constraints with max-transfer 1024");
        opts.max_transfer = 8192;
        REQUIRE(try_open().has_value());
        CHECK((*try_open())->request_alignment() == 4096);
    }
    SECTION("max-write-zero must be a multiple of opt-write-zero")
    {
        opts.opt_write_zero = 4096;
        opts.max_write_zero = 1024;
        CHECK(try_open().error().desc == "Cannot meet constraints with max-write-zero 1024");
    }
    SECTION("config file")
    {
        opts.config = "/nonexistent/blkdebug.cfg";
        CHECK(try_open().error().desc == "Could not read blkdebug config file: No such file or directory");
    }
}

TEST_CASE_METHOD(fixture, "a config file's [inject-error] and [set-state] groups")
{
    char path[] = "/tmp/blkdebug_test_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    {
        std::ofstream f(path);
        f << "# fail reads in state 2\n[inject-error]\nevent = \"read_aio\"\nstate = \"2\"\nerrno = \"28\"\n\n"
             "[set-state]\nevent = \"write_aio\"\nnew_state = \"2\"\n";
    }
    opts.config = path;
    open();
    CHECK(dbg->filename() == std::string("blkdebug:") + path + ":/mem");
    CHECK(read(0) == 0);
    CHECK(write(0) == 0);
    CHECK(read(0) == ENOSPC);

    {
        std::ofstream f(path);
        f << "[inject-error]\nevent = read_aio\n";   // values must be quoted
    }
    CHECK(try_open().error().desc == "Could not parse blkdebug config file");
    {
        std::ofstream f(path);
        f << "[inject-error]\nevent = \"no_such_event\"\n";
    }
    CHECK(try_open().error().desc == "Invalid parameter 'no_such_event'");
    std::remove(path);
}
