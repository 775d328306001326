// SPDX-License-Identifier: MIT
// qcow2 crash ordering, checked by replay: every write the driver makes to its file is
// recorded, then images are rebuilt as a crash would have left them (every prefix of the
// writes, and each span between two flushes replayed in reverse order, as a power loss may
// reorder writes nobody flushed) and `qemu-img check` must find no corruption in any of them.
#include "qcow2_test_util.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>

namespace bjd::block::test {
namespace {

/// Passes everything to its file child and records writes (with their data), flushes and
/// size changes. Discards and write-zeroes are recorded as writes of zeroes (the worst a
/// crash can make of them).
class recorder final : public forwarding_node {
public:
    struct event {
        enum class kind { write, flush, truncate } k;
        std::uint64_t off = 0;   ///< the new size for truncate
        std::vector<std::byte> data;
    };

    using forwarding_node::forwarding_node;

    std::vector<event> log;

protected:
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool fua) override
    {
        log.push_back({event::kind::write, off, {buf.begin(), buf.end()}});
        co_return co_await forwarding_node::do_write(off, buf, fua);
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t off, std::uint64_t len, zero_flags f) override
    {
        log.push_back({event::kind::write, off, std::vector<std::byte>(len)});
        co_return co_await forwarding_node::do_write_zeroes(off, len, f);
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t off, std::uint64_t len) override
    {
        log.push_back({event::kind::write, off, std::vector<std::byte>(len)});
        co_return co_await forwarding_node::do_discard(off, len);
    }
    asio::awaitable<result<void>> do_flush() override
    {
        log.push_back({event::kind::flush, 0, {}});
        co_return co_await forwarding_node::do_flush();
    }
    asio::awaitable<result<void>> do_truncate(std::uint64_t size) override
    {
        log.push_back({event::kind::truncate, size, {}});
        co_return co_await forwarding_node::do_truncate(size);
    }
};

void apply(std::vector<std::byte>& img, const recorder::event& e)
{
    using k = recorder::event::kind;
    if (e.k == k::truncate) {
        img.resize(e.off);
    } else if (e.k == k::write) {
        if (img.size() < e.off + e.data.size())
            img.resize(e.off + e.data.size());
        std::memcpy(img.data() + e.off, e.data.data(), e.data.size());
    }
}

/// qemu-img check's verdict on `img`: 0 clean, 3 leaks only, 2 corruption.
int check(env& e, const std::vector<std::byte>& img, std::string& out)
{
    std::string p = e.path("crash.qcow2");
    spit(p, img);
    return sh("qemu-img check -f qcow2 " + p, &out);
}

/// At most `n` indices spread over [0, count), always including the last.
std::vector<std::size_t> sample(std::size_t count, std::size_t n)
{
    std::vector<std::size_t> out;
    if (count == 0)
        return out;
    const std::size_t step = std::max<std::size_t>(1, count / n);
    for (std::size_t i = 0; i < count; i += step)
        out.push_back(i);
    if (out.back() != count - 1)
        out.push_back(count - 1);
    return out;
}

} // namespace

TEST_CASE("block: qcow2 leaves a consistent image at every crash point", "[qcow2]")
{
    // 512-byte clusters make the workload create refcount blocks and grow the refcount
    // table, the rarest metadata paths, besides L2 tables, copy-on-write and reuse.
    env e;
    std::string img = e.path("c.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 -o cluster_size=512 " + img + " 24M") == 0);
    const std::vector<std::byte> orig = slurp(img);

    auto f = e.file(img, false);
    REQUIRE(ok(f));
    auto rec = std::make_shared<recorder>(e.opts(false), *f);
    auto q = e.run(open_qcow2(e.opts(false), rec, {}));
    REQUIRE(ok(q));
    auto n = *q;

    std::vector<std::byte> model(24 << 20);
    auto write = [&](std::uint64_t off, std::size_t len, unsigned char fill) {
        std::vector<std::byte> d(len, std::byte{fill});
        REQUIRE(e.run(n->write(off, d)));
        std::memset(model.data() + off, fill, len);
    };
    for (unsigned i = 0; i < 24; ++i)   // scattered, unaligned, allocating
        write(i * 700001 % (22 << 20) + 100, 3000 + i * 97, static_cast<unsigned char>(i + 1));
    REQUIRE(e.run(n->flush()));
    write(0, 1 << 20, 0x5a);   // a long run
    for (unsigned i = 0; i < 8; ++i)   // new clusters in L2 tables already on disk
        write(i * 700001 % (22 << 20) + 100 + 9000, 1000, static_cast<unsigned char>(0x80 + i));
    REQUIRE(e.run(n->flush()));
    REQUIRE(e.run(n->discard(200 << 10, 64 << 10)));                  // frees clusters
    std::memset(model.data() + (200 << 10), 0, 64 << 10);
    REQUIRE(e.run(n->write_zeroes(600 << 10, 32 << 10, {.may_unmap = true})));
    std::memset(model.data() + (600 << 10), 0, 32 << 10);
    REQUIRE(e.run(n->flush()));
    write(16 << 20, 6 << 20, 0x6b);   // reuses freed clusters, then grows the refcount table
    write(300, 5000, 0x7c);           // rewrites allocated clusters in place
    REQUIRE(e.run(n->discard(8 << 20, 1 << 20)));   // frees clusters whose references are durable
    std::memset(model.data() + (8 << 20), 0, 1 << 20);
    REQUIRE(e.run(n->flush()));

    const auto& log = rec->log;
    std::vector<std::size_t> flushes;
    for (std::size_t i = 0; i < log.size(); ++i)
        if (log[i].k == recorder::event::kind::flush)
            flushes.push_back(i);
    REQUIRE(flushes.size() >= 6);   // refcounts, tables and frees each fenced off

    std::string out;
    // A process crash: the writes issued so far, in order.
    std::vector<std::byte> state = orig;
    std::size_t applied = 0;
    for (std::size_t i : sample(log.size(), 80)) {
        while (applied <= i)
            apply(state, log[applied++]);
        INFO("crash after event " << i << " of " << log.size());
        int rc = check(e, state, out);
        INFO(out);
        CHECK((rc == 0 || rc == 3));
    }
    CHECK(state.size() == std::filesystem::file_size(img));

    // A power loss: writes between two flushes may land in any order; replay each such span
    // backwards on top of everything flushed before it.
    std::size_t from = 0;
    std::vector<std::byte> base = orig;
    for (std::size_t fi : flushes) {
        std::vector<std::byte> s = base;
        for (std::size_t i = fi; i-- > from;) {
            apply(s, log[i]);
            if ((fi - i) % 16 == 1 || i == from) {
                INFO("span " << from << ".." << fi << " replayed backwards down to " << i);
                int rc = check(e, s, out);
                INFO(out);
                CHECK((rc == 0 || rc == 3));
            }
        }
        for (std::size_t i = from; i < fi; ++i)
            apply(base, log[i]);
        from = fi + 1;
    }

    // And the image as it is now: clean and equal to what was written.
    std::vector<std::byte> back(model.size());
    REQUIRE(e.run(n->read(0, back)));
    CHECK(back == model);
    n.reset();
    rec.reset();
    CHECK(sh("qemu-img check -f qcow2 " + img, &out) == 0);
    std::string raw = e.path("model.raw");
    spit(raw, model);
    CHECK(sh("qemu-img compare -f qcow2 -F raw " + img + " " + raw, &out) == 0);
}

} // namespace bjd::block::test
