// SPDX-License-Identifier: MIT
// Block status of file nodes: the data region remembered between lookups (file.cpp, as QEMU's
// block-status cache) answers for data, and whatever can leave a hole through the node (a
// discard, a write of zeroes, a truncation) makes the next lookup ask the file again.
#include "qcow2_test_util.hpp"
#include "skip.hpp"

#include <fcntl.h>
#include <unistd.h>

using namespace bjd;
using namespace bjd::block;
using namespace bjd::block::test;

namespace {

constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB;

/// A 4 MiB file written in full, open as a writable file node.
struct file_env : env {
    std::shared_ptr<node> n;

    file_env()
    {
        REQUIRE(sh("head -c 4M /dev/urandom > " + path("f.raw")) == 0);
        auto f = file(path("f.raw"), false);
        REQUIRE(ok(f));
        n = *f;
    }

    extent status(std::uint64_t off, std::uint64_t len)
    {
        auto st = run(n->block_status(off, len));
        REQUIRE(st.has_value());
        return *st;
    }
    bool data_at(std::uint64_t off) { return status(off, 4 * KiB).flags & status_data; }

    /// Looks up `off` (data), so that the region around it is remembered; false, with a visible
    /// skip, where the scratch file system makes no holes (or SEEK_HOLE does not report them).
    bool remembered_data_at(std::uint64_t off)
    {
        int fd = ::open(path("probe").c_str(), O_RDWR | O_CREAT, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, 1 * MiB) == 0);
        const bool holes = ::lseek(fd, 0, SEEK_HOLE) == 0;
        ::close(fd);
        if (!holes) {
            bjd::test::skip("the scratch file system reports no holes");
            return false;
        }
        REQUIRE(data_at(off));
        return true;
    }
};

} // namespace

TEST_CASE("file block status: data is answered as the file holds it", "[block][file]")
{
    file_env e;
    for (std::uint64_t off : {std::uint64_t(0), 1 * MiB, 3 * MiB + 4 * KiB, 1 * MiB})
        CHECK(e.data_at(off));
    // Lengths stay within the request, and within the node at its end.
    CHECK(e.status(64 * KiB, 128 * KiB).length == 128 * KiB);
    CHECK(e.status(4 * MiB - 8 * KiB, 8 * KiB).length == 8 * KiB);
}

TEST_CASE("file block status: a discard through the node shows as a hole at once", "[block][file][may-skip]")
{
    file_env e;
    if (!e.remembered_data_at(1 * MiB))
        return;
    REQUIRE(e.run(e.n->discard(1 * MiB, 256 * KiB)));
    auto st = e.status(1 * MiB, 64 * KiB);
    CHECK(st.flags == status_zero);
    CHECK(e.data_at(0));
    CHECK(e.data_at(2 * MiB));
    // Written again, it is data again.
    std::vector<std::byte> buf(64 * KiB, std::byte{0x5a});
    REQUIRE(e.run(e.n->write(1 * MiB, buf)));
    CHECK(e.data_at(1 * MiB));
}

TEST_CASE("file block status: write-zeroes that may unmap shows as a hole at once", "[block][file][may-skip]")
{
    file_env e;
    if (!e.remembered_data_at(2 * MiB))
        return;
    REQUIRE(e.run(e.n->write_zeroes(2 * MiB, 512 * KiB, zero_flags{.may_unmap = true})));
    CHECK(e.status(2 * MiB + 64 * KiB, 4 * KiB).flags == status_zero);
    CHECK(e.data_at(3 * MiB));
}

TEST_CASE("file block status: a truncation forgets the data it removed", "[block][file][may-skip]")
{
    file_env e;
    if (!e.remembered_data_at(3 * MiB))
        return;
    REQUIRE(e.run(e.n->truncate(2 * MiB)));
    REQUIRE(e.run(e.n->truncate(4 * MiB)));   // grown back: the tail is a hole now
    CHECK(e.status(3 * MiB, 4 * KiB).flags == status_zero);
    CHECK(e.data_at(1 * MiB));
}

TEST_CASE("block_status_now: file and raw answer as block_status does, without a coroutine", "[block][file]")
{
    file_env e;
    // Data from 1 MiB to 2 MiB in an otherwise sparse 4 MiB file (all data where the file
    // system makes no holes: the answers must agree either way).
    REQUIRE(sh("truncate -s 4M " + e.path("h.raw") + " && head -c 1M /dev/urandom | dd of=" +
                 e.path("h.raw") + " bs=1M seek=1 conv=notrunc status=none") == 0);
    auto f = e.file(e.path("h.raw"), true);
    REQUIRE(ok(f));
    auto raw = open_raw(e.opts(true), *f, 1 * MiB, std::nullopt);   // the file from 1 MiB on
    REQUIRE(ok(raw));
    for (std::uint64_t off : {std::uint64_t(0), 512 * KiB, 1 * MiB, 1 * MiB + 4 * KiB, 2 * MiB, 3 * MiB}) {
        CAPTURE(off);
        auto now = (*f)->block_status_now(off, 1 * MiB);
        REQUIRE(now.has_value());
        REQUIRE(now->has_value());
        auto later = e.run((*f)->block_status(off, 1 * MiB));
        REQUIRE(later.has_value());
        CHECK((*now)->flags == later->flags);
        CHECK((*now)->length == later->length);
        if (off >= 1 * MiB && off < 2 * MiB)
            CHECK(((*now)->flags & status_data));
        if (off >= 1 * MiB) {
            auto via_raw = (*raw)->block_status_now(off - 1 * MiB, 1 * MiB);
            REQUIRE(via_raw.has_value());
            REQUIRE(via_raw->has_value());
            CHECK((*via_raw)->flags == later->flags);
            CHECK((*via_raw)->length == later->length);
        }
    }
    // Where the file system makes holes, the sparse start reads as one.
    int fd = ::open(e.path("h.raw").c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    const bool holes = ::lseek(fd, 0, SEEK_HOLE) == 0;
    ::close(fd);
    if (holes) {
        auto start = (*f)->block_status_now(0, 4 * KiB);
        REQUIRE((start && *start));
        CHECK((*start)->flags == status_zero);
    }
    // The range checks of block_status apply: past the end is an error, not an answer.
    auto past = (*f)->block_status_now(4 * MiB, 4 * KiB);
    REQUIRE(past.has_value());
    CHECK_FALSE(past->has_value());
    // A driver without an immediate answer says so, and the caller awaits block_status.
    forwarding_node fw(e.opts(true), *f);
    CHECK_FALSE(fw.block_status_now(0, 4 * KiB).has_value());
}
