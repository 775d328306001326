// SPDX-License-Identifier: MIT
// The copy-on-read filter block-stream uses: populate copies only what the node does not hold
// itself, and a guest write to a range being populated is never overwritten by the copy.
#include "bjd/block/copy_on_read.hpp"

#include "bjd/io/buffer.hpp"
#include "qcow2_test_util.hpp"

#include <algorithm>
#include <vector>

using namespace bjd;
using namespace bjd::block;
using namespace bjd::block::test;

namespace {

/// base.qcow2 full of 0x11 (1 MiB), top.qcow2 over it with nothing of its own.
struct chain_env : env {
    std::shared_ptr<node> base, top;
    std::shared_ptr<copy_on_read> cor;
    /// Smaller than the ranges populated, so that populate works in several pieces.
    io::aligned_buffer scratch{192 << 10};

    chain_env()
    {
        REQUIRE(sh("cd " + dir + " && qemu-img create -q -f qcow2 base.qcow2 1M && " +
                   "qemu-io -f qcow2 -c 'write -P 0x11 0 1M' base.qcow2 >/dev/null && " +
                   "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 1M") == 0);
        auto b = qcow2(path("base.qcow2"), true);
        REQUIRE(ok(b));
        base = *b;
        auto t = qcow2(path("top.qcow2"));
        REQUIRE(ok(t));
        top = *t;
        REQUIRE(ok(set_qcow2_backing(*top, base)));
        node_options o;
        o.name = "cor";
        cor = std::make_shared<copy_on_read>(o, top, false, ctx.get_executor());
    }
    ~chain_env()
    {
        (void)drop_filter(*cor);
        REQUIRE(run(top->flush()));
    }

    bool allocated_in_top(std::uint64_t off)
    {
        auto st = run(top->block_status(off, 1));
        REQUIRE(st.has_value());
        return st->flags & status_allocated;
    }
    /// Every byte of [off, off+len) in `n` is `v`.
    bool reads(node& n, std::uint64_t off, std::uint64_t len, unsigned char v)
    {
        std::vector<std::byte> buf(len);
        REQUIRE(run(n.read(off, buf)));
        return std::all_of(buf.begin(), buf.end(), [v](std::byte b) { return b == std::byte{v}; });
    }
};

} // namespace

TEST_CASE("copy-on-read: populate copies the backing's data into the node", "[block][cor]")
{
    chain_env e;
    CHECK_FALSE(e.allocated_in_top(0));
    REQUIRE(e.run(e.cor->populate(0, 512 << 10, e.scratch.span())));
    CHECK(e.allocated_in_top(0));
    CHECK(e.allocated_in_top((512 << 10) - 1));
    CHECK_FALSE(e.allocated_in_top(512 << 10));
    // Without its backing image, top still reads the copied half.
    REQUIRE(ok(set_qcow2_backing(*e.top, nullptr)));
    CHECK(e.reads(*e.top, 0, 512 << 10, 0x11));
    CHECK(e.reads(*e.top, 512 << 10, 512 << 10, 0));
}

TEST_CASE("copy-on-read: what the node holds itself is not copied over", "[block][cor]")
{
    chain_env e;
    std::vector<std::byte> data(64 << 10, std::byte{0x33});
    REQUIRE(e.run(e.top->write(256 << 10, data)));
    REQUIRE(e.run(e.cor->populate(0, 1 << 20, e.scratch.span())));
    CHECK(e.reads(*e.cor, 256 << 10, 64 << 10, 0x33));
    CHECK(e.reads(*e.cor, 0, 256 << 10, 0x11));
    CHECK(e.reads(*e.cor, 320 << 10, 704 << 10, 0x11));
}

TEST_CASE("copy-on-read: a guest write racing a populate of the same range wins", "[block][cor]")
{
    // Whichever starts first, the guest's data must be what the node holds afterwards: the
    // populate either finishes before the write, or sees the written cluster and skips it.
    for (int write_first = 0; write_first < 2; ++write_first) {
        chain_env e;
        std::vector<std::byte> data(64 << 10, std::byte{0x44});
        int done = 0;
        auto populate = [&] {
            asio::co_spawn(e.ctx, e.cor->populate(0, 1 << 20, e.scratch.span()), [&](std::exception_ptr, result<void> r) {
                CHECK(r);
                ++done;
            });
        };
        auto write = [&] {
            asio::co_spawn(e.ctx, e.cor->write(128 << 10, data), [&](std::exception_ptr, result<void> r) {
                CHECK(r);
                ++done;
            });
        };
        if (write_first) {
            write();
            populate();
        } else {
            populate();
            write();
        }
        e.ctx.restart();
        e.ctx.run_for(std::chrono::seconds(60));
        REQUIRE(done == 2);
        CHECK(e.reads(*e.top, 128 << 10, 64 << 10, 0x44));
        CHECK(e.reads(*e.top, 0, 128 << 10, 0x11));
        CHECK(e.allocated_in_top(0));
    }
}
