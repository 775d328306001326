// SPDX-License-Identifier: MIT
// Fuzz target: a qcow2 image from untrusted bytes (issue #8). The input is the whole image
// file, held in memory. It is opened read-only (reads, block status walks) and read-write
// (writes, write-zeroes, discards, flush, then reads again); a backing node is attached when
// the header names one. Every outcome must be a clean error or success: no crash, no UB, no
// allocation beyond what the format's limits allow (run with -rss_limit_mb/-malloc_limit_mb).
#include "fuzz_util.hpp"

#include <string>

namespace {

using namespace bjd;
using bjd::fuzz::mem_file;

constexpr std::size_t max_input = 1u << 20;
constexpr std::uint64_t max_file_growth = 32ull << 20;   // what writes may add to the file
constexpr std::uint64_t max_io = 256u << 10;              // bytes per read or write

struct ctx {
    boost::asio::io_context io;
    unsigned n = 0;
    block::node_options opts(bool ro)
    {
        block::node_options o;
        o.name = "n" + std::to_string(n++);
        o.read_only = ro;
        o.discard_unmap = true;
        return o;
    }
};

std::shared_ptr<block::node> open(ctx& c, const std::vector<std::byte>& bytes, bool ro,
                                  block::qcow2_open_options qo, bool yield = false)
{
    auto f = std::make_shared<mem_file>("file" + std::to_string(c.n), bytes, ro,
                                        ro ? bytes.size() : bytes.size() + max_file_growth);
    f->yield = yield;
    auto r = fuzz::run(c.io, block::open_qcow2(c.opts(ro), f, qo));
    if (!r) {
        if (r.error().desc.empty())
            std::abort();   // an error must say something
        return nullptr;
    }
    return *r;
}

/// A backing node when the header names a backing file: a small memory node of a size the
/// input picks (smaller or larger than the image), so reads cross its end.
void attach_backing(ctx& c, block::node& img, fuzz::tape& t)
{
    const auto* info = block::qcow2_info(img);
    if (!info || info->backing_file.empty())
        return;
    std::uint64_t sz = t.below(std::min<std::uint64_t>(img.size() + 65536, 4u << 20) + 1);
    std::vector<std::byte> bytes(sz, std::byte{0x5a});
    auto b = std::make_shared<mem_file>("backing" + std::to_string(c.n++), std::move(bytes), true, sz);
    if (!block::set_qcow2_backing(img, b))
        std::abort();
}

boost::asio::awaitable<bool> reads(block::node& n, fuzz::tape& t)
{
    const std::uint64_t size = n.size();
    if (size == 0)
        co_return true;
    std::vector<std::byte> buf;
    for (int i = 0; i < 4; ++i) {
        std::uint64_t off = i == 0 ? 0 : t.below(size);
        std::uint64_t len = std::min<std::uint64_t>(1 + t.below(max_io), size - off);
        buf.resize(len);
        (void)co_await n.read(off, buf);
    }
    // A block status walk from a chosen offset, bounded in steps.
    std::uint64_t off = t.below(size);
    for (int i = 0; i < 64 && off < size; ++i) {
        auto e = co_await n.block_status(off, size - off);
        if (!e)
            break;
        if (e->length == 0 || e->length > size - off)
            std::abort();   // the contract callers rely on
        off += e->length;
    }
    co_return true;
}

struct op {
    std::uint8_t code;
    std::uint64_t off, len;
};

/// One write-type request (or a read/flush); its outcome only has to be clean.
boost::asio::awaitable<bool> do_op(std::shared_ptr<block::node> n, op o)
{
    switch (o.code % 6) {
    case 0:
    case 1: {
        std::vector<std::byte> buf(o.len, std::byte(o.code));
        (void)co_await n->write(o.off, buf, (o.code & 0x40) != 0);
        break;
    }
    case 2:
        (void)co_await n->write_zeroes(o.off, o.len,
                                       {.may_unmap = (o.code & 0x40) != 0, .no_fallback = (o.code & 0x80) != 0});
        break;
    case 3:
        (void)co_await n->discard(o.off, o.len);
        break;
    case 4:
        (void)co_await n->flush();
        break;
    case 5: {
        std::vector<std::byte> buf(o.len);
        (void)co_await n->read(o.off, buf);
        break;
    }
    }
    co_return true;
}

std::vector<op> plan_ops(block::node& n, fuzz::tape& t)
{
    std::vector<op> ops;
    const std::uint64_t size = n.size();
    if (size == 0)
        return ops;
    const std::uint64_t cs = std::max<std::uint32_t>(n.cluster_size(), 512);
    for (int i = 0; i < 6; ++i) {
        // Cluster-aligned most of the time (allocating paths), unaligned otherwise (COW).
        std::uint8_t code = t.u8();
        std::uint64_t off = t.below(size);
        if (code & 0x10)
            off = off / cs * cs;
        std::uint64_t len = std::min<std::uint64_t>(1 + t.below(code & 0x20 ? 4 * cs : max_io), size - off);
        ops.push_back({code, off, len});
    }
    return ops;
}

/// Runs `ops` one after the other, or all at once (their I/O interleaving on the loop, as with
/// an NBD client's queue), then a flush and the reads again.
void writes(ctx& c, const std::shared_ptr<block::node>& n, fuzz::tape& t, bool concurrent)
{
    auto ops = plan_ops(*n, t);
    if (!concurrent) {
        for (const op& o : ops)
            fuzz::run(c.io, do_op(n, o));
    } else {
        std::size_t done = 0;
        for (const op& o : ops)
            boost::asio::co_spawn(c.io, do_op(n, o), [&](std::exception_ptr e, bool) {
                if (e)
                    std::rethrow_exception(e);
                ++done;
            });
        c.io.restart();
        while (done < ops.size() && c.io.run_one() > 0) {}
        if (done < ops.size())
            std::abort();   // a request never finished: a hang
    }
    fuzz::run(c.io, do_op(n, {4, 0, 0}));
    fuzz::run(c.io, reads(*n, t));
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size > max_input)
        return 0;
    fuzz::quiet_logs();
    std::vector<std::byte> bytes(size);
    if (size)
        std::memcpy(bytes.data(), data, size);
    // Operation parameters come from the tail of the image, so a small change to the
    // header does not reshuffle them.
    std::span<const std::uint8_t> tail(data + size - std::min<std::size_t>(size, 64), std::min<std::size_t>(size, 64));
    ctx c;
    {
        fuzz::tape t(tail);
        // Tiny caches half of the time: evictions and write-backs under pressure.
        block::qcow2_open_options qo;
        const std::uint8_t mode = t.u8();
        const bool yield = mode & 2;   // I/O that suspends, and concurrent requests
        if (mode & 1) {
            qo.l2_cache_bytes = 1;
            qo.refcount_cache_bytes = 1;
        }
        if (auto n = open(c, bytes, true, qo)) {
            attach_backing(c, *n, t);
            fuzz::run(c.io, reads(*n, t));
        }
        if (auto n = open(c, bytes, false, qo, yield)) {
            attach_backing(c, *n, t);
            writes(c, n, t, yield);
        }
    }
    return 0;
}
