// SPDX-License-Identifier: MIT
// The engine contract, run against both backends: io_uring (tagged [uring], skipped visibly
// when the kernel refuses a ring) and the thread pool.
#include "bjd/io/engine.hpp"
#include "bjd/io/buffer.hpp"

#include "io_test_util.hpp"

#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

using namespace bjd;
using namespace bjd::io;
using namespace bjd::io::test;

namespace {

std::vector<std::byte> pattern(std::size_t n, unsigned seed)
{
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i)
        v[i] = static_cast<std::byte>((i * 31 + seed * 7 + (i >> 12)) & 0xff);
    return v;
}

asio::awaitable<result<void>> write_co(engine* e, int fd, std::span<const std::byte> buf, std::uint64_t off)
{
    co_return co_await e->write(fd, buf, off);
}

asio::awaitable<result<std::size_t>> read_co(engine* e, int fd, std::span<std::byte> buf, std::uint64_t off)
{
    co_return co_await e->read(fd, buf, off);
}

asio::awaitable<result<void>> fsync_co(engine* e, int fd, bool datasync)
{
    co_return co_await e->fsync(fd, datasync);
}

asio::awaitable<result<void>> fallocate_co(engine* e, int fd, int mode, std::uint64_t off, std::uint64_t len)
{
    co_return co_await e->fallocate(fd, mode, off, len);
}

void check_read_write(backend b)
{
    asio::io_context ctx;
    auto e = open_engine(ctx, b);
    if (!e)
        return;
    temp_file f;
    auto data = pattern(1 << 20, 1);
    REQUIRE(run(ctx, write_co(e.get(), f.fd, data, 4096)).has_value());
    std::vector<std::byte> back(data.size());
    auto n = run(ctx, read_co(e.get(), f.fd, back, 4096));
    REQUIRE(n.has_value());
    CHECK(*n == data.size());
    CHECK((back == data)); // parenthesised: do not print 1 MiB vectors
    // Bytes 0..4095 are a hole: they read as zeros.
    std::vector<std::byte> head(4096, std::byte{0xff});
    CHECK(run(ctx, read_co(e.get(), f.fd, head, 0)).value() == 4096);
    CHECK(std::all_of(head.begin(), head.end(), [](std::byte x) { return x == std::byte{0}; }));
    auto s = e->stats();
    CHECK(s.writes == 1);
    CHECK(s.reads == 2);
    CHECK(s.bytes_written == data.size());
    CHECK(s.bytes_read == data.size() + 4096);
    CHECK(s.errors == 0);
    CHECK(s.in_flight == 0);
    if (b == backend::io_uring)
        CHECK(s.submit_calls >= 1);
}

void check_short_read(backend b)
{
    asio::io_context ctx;
    auto e = open_engine(ctx, b);
    if (!e)
        return;
    temp_file f;
    auto data = pattern(10000, 2);
    REQUIRE(run(ctx, write_co(e.get(), f.fd, data, 0)).has_value());
    std::vector<std::byte> back(16384);
    auto n = run(ctx, read_co(e.get(), f.fd, back, 0));
    REQUIRE(n.has_value());
    CHECK(*n == 10000);
    CHECK(std::equal(data.begin(), data.end(), back.begin()));
    CHECK(e->stats().short_resumes == 1); // read the rest, found end of file
    CHECK(run(ctx, read_co(e.get(), f.fd, back, 20000)).value() == 0);
    CHECK(run(ctx, read_co(e.get(), f.fd, std::span<std::byte>(), 0)).value() == 0);
}

void check_direct(backend b)
{
    std::string dir = direct_io_dir();
    if (dir.empty()) {
        bjd::test::skip("no directory here supports O_DIRECT (tried $BJD_TEST_DIR, /var/tmp, ., /tmp)");
        return;
    }
    asio::io_context ctx;
    auto e = open_engine(ctx, b);
    if (!e)
        return;
    temp_file f(dir, O_DIRECT);
    REQUIRE(f.fd >= 0);
    aligned_buffer out(65536), in(65536);
    auto data = pattern(out.size(), 3);
    std::memcpy(out.data(), data.data(), data.size());
    REQUIRE(run(ctx, write_co(e.get(), f.fd, out.span(), 8192)).has_value());
    CHECK(run(ctx, read_co(e.get(), f.fd, in.span(), 8192)).value() == in.size());
    CHECK(std::memcmp(in.data(), out.data(), in.size()) == 0);

    // A misaligned file offset is EINVAL. (Buffer alignment is only checked against the
    // device's DMA alignment since Linux 6.0, which may be a few bytes on virtio.)
    auto bad = run(ctx, read_co(e.get(), f.fd, in.span().subspan(0, 4096), 8192 + 100));
    REQUIRE(bad.has_error());
    CHECK(bad.error() == std::errc::invalid_argument);

    // An unaligned end of file ends the read there.
    REQUIRE(::ftruncate(f.fd, 8192 + 10000) == 0);
    auto n = run(ctx, read_co(e.get(), f.fd, in.span().subspan(0, 16384), 8192));
    REQUIRE(n.has_value());
    CHECK(*n == 10000);
    CHECK(std::memcmp(in.data(), out.data(), 10000) == 0);
}

/// One of many concurrent requests: write its block, then read it back and compare.
asio::awaitable<void> write_then_read(engine* e, int fd, unsigned i, std::vector<int>* completions)
{
    auto data = pattern(4096, i);
    auto w = co_await e->write(fd, data, std::uint64_t(i) * 4096);
    if (!w)
        co_return;
    std::vector<std::byte> back(4096);
    auto r = co_await e->read(fd, back, std::uint64_t(i) * 4096);
    if (r && *r == 4096 && back == data)
        ++(*completions)[i];
}

void check_many_in_flight(backend b)
{
    asio::io_context ctx;
    engine_options opts;
    opts.queue_depth = 32;
    opts.pool_threads = 4;
    auto e = open_engine(ctx, b, opts);
    if (!e)
        return;
    temp_file f;
    constexpr unsigned n = 512;
    std::vector<int> completions(n, 0);
    for (unsigned i = 0; i < n; ++i)
        asio::co_spawn(ctx, write_then_read(e.get(), f.fd, i, &completions), asio::detached);
    run_loop(ctx);
    // Exactly once: every request completed, none twice, each with the right data.
    CHECK(std::count(completions.begin(), completions.end(), 1) == n);
    auto s = e->stats();
    CHECK(s.writes == n);
    CHECK(s.reads == n);
    CHECK(s.max_in_flight == n);
    CHECK(s.in_flight == 0);
    if (b == backend::io_uring) {
        CHECK(s.sq_waits > 0);                // more requests than queue_depth: some waited
        // Submissions are batched per loop turn: at least the first turn's queue_depth
        // requests go in one call. (How later ones batch depends on how completions arrive,
        // which a loaded machine spreads out: not something to assert.)
        INFO("sqes " << s.sqes << " submit calls " << s.submit_calls);
        CHECK(s.submit_calls + (opts.queue_depth - 1) <= s.sqes);
    }
}

void check_punch_hole(backend b)
{
    asio::io_context ctx;
    auto e = open_engine(ctx, b);
    if (!e)
        return;
    temp_file f;
    std::vector<std::byte> data(1 << 20, std::byte{0xab});
    REQUIRE(run(ctx, write_co(e.get(), f.fd, data, 0)).has_value());
    REQUIRE(run(ctx, fsync_co(e.get(), f.fd, false)).has_value());
    struct stat before {};
    REQUIRE(::fstat(f.fd, &before) == 0);
    auto r = run(ctx, fallocate_co(e.get(), f.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 256 << 10, 256 << 10));
    if (r.has_error() && r.error() == std::errc::operation_not_supported) {
        bjd::test::skip("this file system cannot punch holes");
        return;
    }
    REQUIRE(r.has_value());
    struct stat after {};
    REQUIRE(::fstat(f.fd, &after) == 0);
    CHECK(after.st_size == before.st_size);
    CHECK(after.st_blocks < before.st_blocks);
    std::vector<std::byte> back(data.size());
    REQUIRE(run(ctx, read_co(e.get(), f.fd, back, 0)).value() == back.size());
    for (std::size_t i = 0; i < back.size(); i += 4096) {
        bool in_hole = i >= (256u << 10) && i < (512u << 10);
        REQUIRE(back[i] == (in_hole ? std::byte{0} : std::byte{0xab}));
    }
    CHECK(e->stats().fallocates == 1);
}

void check_fsync(backend b)
{
    asio::io_context ctx;
    auto e = open_engine(ctx, b);
    if (!e)
        return;
    temp_file f;
    REQUIRE(run(ctx, write_co(e.get(), f.fd, pattern(8192, 4), 0)).has_value());
    CHECK(run(ctx, fsync_co(e.get(), f.fd, false)).has_value());
    CHECK(run(ctx, fsync_co(e.get(), f.fd, true)).has_value());
    CHECK(e->stats().syncs == 2);
}

void check_errors(backend b)
{
    asio::io_context ctx;
    auto e = open_engine(ctx, b);
    if (!e)
        return;
    std::vector<std::byte> buf(4096);
    auto r = run(ctx, read_co(e.get(), -1, buf, 0));
    REQUIRE(r.has_error());
    CHECK(r.error() == std::errc::bad_file_descriptor);

    temp_file f;
    int ro = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(ro >= 0);
    auto w = run(ctx, write_co(e.get(), ro, buf, 0));
    REQUIRE(w.has_error());
    CHECK(w.error() == std::errc::bad_file_descriptor);
    ::close(ro);

    int dir = ::open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    REQUIRE(dir >= 0);
    auto d = run(ctx, read_co(e.get(), dir, buf, 0));
    REQUIRE(d.has_error());
    CHECK(d.error() == std::errc::is_a_directory);
    ::close(dir);

    auto s = run(ctx, fsync_co(e.get(), -1, true));
    REQUIRE(s.has_error());
    CHECK(s.error() == std::errc::bad_file_descriptor);
    auto a = run(ctx, fallocate_co(e.get(), -1, 0, 0, 4096));
    REQUIRE(a.has_error());
    CHECK(a.error() == std::errc::bad_file_descriptor);
    CHECK(e->stats().errors == 5);
}

asio::awaitable<void> write_and_count(engine* e, int fd, unsigned i, unsigned* done)
{
    auto r = co_await e->write(fd, pattern(65536, i), std::uint64_t(i) << 16);
    if (r)
        ++*done;
}

asio::awaitable<void> drain_co(engine* e, const unsigned* done, unsigned* seen_at_drain)
{
    co_await e->drain();
    *seen_at_drain = *done;
}

void check_drain(backend b)
{
    asio::io_context ctx;
    auto e = open_engine(ctx, b);
    if (!e)
        return;
    temp_file f;
    unsigned done = 0, seen = ~0u;
    for (unsigned i = 0; i < 64; ++i)
        asio::co_spawn(ctx, write_and_count(e.get(), f.fd, i, &done), asio::detached);
    asio::co_spawn(ctx, drain_co(e.get(), &done, &seen), asio::detached);
    asio::co_spawn(ctx, drain_co(e.get(), &done, &seen), asio::detached); // two waiters
    run_loop(ctx);
    CHECK(done == 64);
    CHECK(seen == 64); // drain returned only after every request completed
    CHECK(e->stats().in_flight == 0);
    std::vector<std::byte> buf(4096);
    auto r = run(ctx, read_co(e.get(), f.fd, buf, 0));
    REQUIRE(r.has_error());
    CHECK(r.error() == std::errc::operation_canceled);
    CHECK(e->stats().reads == 0); // refused before anything was submitted
}

asio::awaitable<void> offloaded_copy(engine* e, int fd, unsigned i, unsigned* ok)
{
    const auto data = pattern(1 << 20, 100 + i);
    if (!co_await e->write(fd, data, std::uint64_t(i) << 20, io_hint::offload))
        co_return;
    std::vector<std::byte> back(data.size());
    auto n = co_await e->read(fd, back, std::uint64_t(i) << 20, io_hint::offload);
    if (n && *n == data.size() && back == data)
        ++*ok;
}

void check_offload(backend b)
{
    // Buffered 1 MiB requests handed to the kernel's workers (io_uring) come back like any.
    asio::io_context ctx;
    auto e = open_engine(ctx, b);
    if (!e)
        return;
    temp_file f;
    unsigned ok = 0;
    for (unsigned i = 0; i < 16; ++i)
        asio::co_spawn(ctx, offloaded_copy(e.get(), f.fd, i, &ok), asio::detached);
    run_loop(ctx);
    CHECK(ok == 16);
    CHECK(e->stats().bytes_written == 16u << 20);
    CHECK(e->stats().bytes_read == 16u << 20);
    CHECK(e->stats().in_flight == 0);
}

void check_registered(backend b)
{
    // Requests whose buffer lies within a registered range use it (io_uring: READ_FIXED and
    // WRITE_FIXED); others, and all after the registration ends, go as before. The data is
    // the same either way.
    asio::io_context ctx;
    auto e = open_engine(ctx, b);
    if (!e)
        return;
    temp_file f;
    auto slot = make_registered_buffer(*e, 1 << 20);
    aligned_buffer plain(1 << 20);
    auto reg = e->register_range(plain.span());
    if (b == backend::threads) {
        CHECK_FALSE(reg);
    } else if (!reg) {
        bjd::test::skip("the kernel keeps no sparse table of registered buffers (Linux 5.19)");
        return;
    }
    const auto data = pattern(256 << 10, 9);
    std::memcpy(slot.data() + 4096, data.data(), data.size());
    // A piece inside the slot, as a qcow2 node reads a cluster into part of a copy buffer.
    REQUIRE(run(ctx, write_co(e.get(), f.fd, std::span(slot.data() + 4096, data.size()), 8192)).has_value());
    const std::uint64_t fixed_after_write = e->stats().fixed;
    REQUIRE(run(ctx, read_co(e.get(), f.fd, std::span(plain.data() + 512, data.size()), 8192)).value() == data.size());
    CHECK(std::memcmp(plain.data() + 512, data.data(), data.size()) == 0);
    const std::uint64_t fixed_after_read = e->stats().fixed;
    // Past the end of the registered range: not registered as a whole.
    std::vector<std::byte> heap(4096);
    REQUIRE(run(ctx, read_co(e.get(), f.fd, heap, 8192)).value() == heap.size());
    CHECK(std::memcmp(heap.data(), data.data(), heap.size()) == 0);
    const std::uint64_t fixed_after_heap = e->stats().fixed;
    reg.reset();
    std::memset(plain.data(), 0, plain.size());
    REQUIRE(run(ctx, read_co(e.get(), f.fd, std::span(plain.data(), data.size()), 8192)).value() == data.size());
    CHECK(std::memcmp(plain.data(), data.data(), data.size()) == 0);
    if (b == backend::io_uring) {
        CHECK(fixed_after_write == 1);
        CHECK(fixed_after_read == 2);
        CHECK(fixed_after_heap == 2);
        CHECK(e->stats().fixed == 2);   // the released range no longer counts
        // The table is finite: registrations beyond it come back empty, and their requests
        // still work.
        std::vector<aligned_buffer> many;
        std::vector<registered_range> regs;
        for (int i = 0; i < 300; ++i) {
            many.emplace_back(4096);
            regs.push_back(e->register_range(many.back().span()));
        }
        CHECK(std::count_if(regs.begin(), regs.end(), [](const registered_range& r) { return bool(r); }) < 300);
        CHECK_FALSE(regs.back());
        REQUIRE(run(ctx, read_co(e.get(), f.fd, many.back().span(), 8192)).value() == 4096);
        CHECK(std::memcmp(many.back().data(), data.data(), 4096) == 0);
    } else {
        CHECK(e->stats().fixed == 0);
    }
    // A registration may outlive its engine (a job's buffer held past shutdown): it then
    // releases nothing.
    const unsigned none = 0;
    unsigned seen = 0;
    run(ctx, drain_co(e.get(), &none, &seen));
    e.reset();
    slot = aligned_buffer();
}

asio::awaitable<result<void>> clone_co(engine* e, int in, int out, std::uint64_t len)
{
    co_return co_await e->clone_range(in, 0, out, 0, len);
}

/// A clone of 1 MiB between two files in `dir`: shared, or refused; never an error.
/// `must_share`: the directory is on a file system that shares extents.
void check_clone_in(backend b, const std::string& dir, bool must_share)
{
    asio::io_context ctx;
    auto e = open_engine(ctx, b);
    if (!e)
        return;
    temp_file src(dir), dst(dir);
    auto data = pattern(1 << 20, 3);
    REQUIRE(run(ctx, write_co(e.get(), src.fd, data, 0)).has_value());
    REQUIRE(::ftruncate(dst.fd, off_t(data.size())) == 0);
    auto r = run(ctx, clone_co(e.get(), src.fd, dst.fd, data.size()));
    auto s = e->stats();
    if (must_share)
        REQUIRE(r.has_value());
    CHECK(s.clones == 1);
    CHECK(s.in_flight == 0);
    CHECK(s.errors == 0);   // shared, or refused: a refusal is an answer, not an error
    if (r) {
        // This file system shares extents (XFS, Btrfs): the target reads as the source.
        std::vector<std::byte> back(data.size());
        CHECK(run(ctx, read_co(e.get(), dst.fd, back, 0)).value() == data.size());
        CHECK((back == data));
        CHECK(s.bytes_cloned == data.size());
    } else {
        // It does not (ext4, tmpfs): refused at once, nothing written.
        const int err = r.error().value();
        CHECK((err == EOPNOTSUPP || err == EXDEV || err == EINVAL));
        CHECK(s.bytes_cloned == 0);
        std::vector<std::byte> back(4096, std::byte{0xff});
        CHECK(run(ctx, read_co(e.get(), dst.fd, back, 0)).value() == back.size());
        CHECK(std::all_of(back.begin(), back.end(), [](std::byte x) { return x == std::byte{0}; }));
    }
    // No source at all: a real error, counted as one.
    auto bad = run(ctx, clone_co(e.get(), -1, dst.fd, 4096));
    REQUIRE(!bad);
    CHECK(bad.error().value() == EBADF);
    CHECK(e->stats().errors == 1);
}

void check_clone(backend b)
{
    check_clone_in(b, "/var/tmp", false);
}

void check_clone_shared(backend b)
{
    // The XFS of tests/reflink/xfs.sh (ctest's fixture `reflink`).
    const char* d = std::getenv("BJD_REFLINK_DIR");
    struct stat st {};
    if (!d || !*d || ::stat(d, &st) != 0 || !S_ISDIR(st.st_mode)) {
        bjd::test::skip("no file system that shares extents: BJD_REFLINK_DIR names no directory "
                        "(tests/reflink/xfs.sh mounts one)");
        return;
    }
    check_clone_in(b, d, true);
}

} // namespace

#define IO_BACKEND_TEST(name, fn)                                                              \
    TEST_CASE("io: " name " (io_uring)", "[io][uring][may-skip]") { fn(backend::io_uring); } \
    TEST_CASE("io: " name " (threads)", "[io][threads][may-skip]") { fn(backend::threads); }

IO_BACKEND_TEST("write then read returns the data", check_read_write)
IO_BACKEND_TEST("short read at end of file is resumed and stops at EOF", check_short_read)
IO_BACKEND_TEST("O_DIRECT with aligned buffers, and a misaligned offset is EINVAL", check_direct)
IO_BACKEND_TEST("512 requests in flight with queue depth 32 complete exactly once", check_many_in_flight)
IO_BACKEND_TEST("fallocate punches a hole", check_punch_hole)
IO_BACKEND_TEST("fsync and fdatasync", check_fsync)
IO_BACKEND_TEST("errors come back as errno", check_errors)
IO_BACKEND_TEST("drain waits for in-flight requests and refuses new ones", check_drain)
IO_BACKEND_TEST("offloaded buffered requests return the data", check_offload)
IO_BACKEND_TEST("clone_range shares extents or is refused without an error", check_clone)
IO_BACKEND_TEST("reads and writes within a registered range use it", check_registered)
TEST_CASE("io: clone_range shares extents on XFS with reflink (io_uring)", "[io][uring][may-skip][reflink]")
{
    check_clone_shared(backend::io_uring);
}
TEST_CASE("io: clone_range shares extents on XFS with reflink (threads)", "[io][threads][may-skip][reflink]")
{
    check_clone_shared(backend::threads);
}
