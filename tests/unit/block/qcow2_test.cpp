// SPDX-License-Identifier: MIT
// qcow2 driver against qemu-img made images: randomized workloads compared byte for byte with
// a raw model, then `qemu-img check` and `qemu-img compare`; chains; block status; concurrency.
#include "bjd/block/driver.hpp"
#include "bjd/block/reopen.hpp"

#include "qcow2_test_util.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstring>
#include <filesystem>
#include <random>

using namespace bjd;
using namespace bjd::block;
using namespace bjd::block::test;

namespace {

enum class base_kind { none, raw, qcow2 };

struct config {
    unsigned cluster;
    bool v3;
    base_kind base;
    std::uint64_t size;
    unsigned ops = 150;
    bool reftable_grows = false;   ///< the workload outgrows the refcount table qemu-img made
};

std::uint64_t reftable_offset(const std::string& img)
{
    auto h = slurp(img);
    REQUIRE(h.size() >= 56);
    std::uint64_t v = 0;
    for (int i = 48; i < 56; ++i)
        v = (v << 8) | std::to_integer<unsigned>(h[i]);
    return v;
}

std::string compat(bool v3) { return v3 ? "1.1" : "0.10"; }

/// Creates the image (and its base, filled by qemu-io) and returns the top path.
std::string make_chain(env& e, const config& c)
{
    std::string top = e.path("top.qcow2");
    std::string opts = "-o cluster_size=" + std::to_string(c.cluster) + ",compat=" + compat(c.v3);
    if (c.base == base_kind::none) {
        REQUIRE(sh("qemu-img create -q -f qcow2 " + opts + " " + top + " " + std::to_string(c.size)) == 0);
        return top;
    }
    // A base shorter than the top: reads past its end must be zeroes.
    std::uint64_t bsize = c.size / 2 + 3 * 512;
    std::string fmt = c.base == base_kind::raw ? "raw" : "qcow2";
    std::string base = e.path("base." + fmt);
    REQUIRE(sh("qemu-img create -q -f " + fmt + " " + base + " " + std::to_string(bsize)) == 0);
    REQUIRE(sh("qemu-io -f " + fmt + " -c 'write -P 0x5a 0 " + std::to_string(bsize) + "' -c 'write -P 0x11 4096 8192'" +
               " -c 'write -z 65536 65536' " + base + " >/dev/null") == 0);
    REQUIRE(sh("qemu-img create -q -f qcow2 " + opts + " -b base." + fmt + " -F " + fmt + " " + top + " " +
               std::to_string(c.size)) == 0);
    return top;
}

/// The guest content of `img` as qemu-img sees it (the whole chain).
std::vector<std::byte> qemu_view(env& e, const std::string& img, const std::string& fmt)
{
    std::string out = e.path("view.raw");
    REQUIRE(sh("qemu-img convert -f " + fmt + " -O raw " + img + " " + out) == 0);
    return slurp(out);
}

/// Opens the top image with its backing attached by hand (what graph.cpp does from the header).
std::shared_ptr<node> open_chain(env& e, const config& c, const std::string& top)
{
    auto q = e.qcow2(top);
    REQUIRE(ok(q));
    if (c.base == base_kind::raw) {
        REQUIRE(ok(set_qcow2_backing(**q, e.raw(e.path("base.raw")))));
    } else if (c.base == base_kind::qcow2) {
        auto b = e.qcow2(e.path("base.qcow2"), true);
        REQUIRE(ok(b));
        REQUIRE(ok(set_qcow2_backing(**q, *b)));
    }
    return *q;
}

std::vector<std::byte> read_all(env& e, node& n)
{
    std::vector<std::byte> buf(n.size());
    REQUIRE(e.run(n.read(0, buf)));
    return buf;
}

void check_image(env& e, const std::string& img, const std::vector<std::byte>& model)
{
    std::string out;
    CHECK(sh("qemu-img check -f qcow2 " + img, &out) == 0);
    std::string raw = e.path("model.raw");
    spit(raw, model);
    CHECK(sh("qemu-img compare -f qcow2 -F raw " + img + " " + raw, &out) == 0);
}

void workload(const config& c, unsigned seed)
{
    env e;
    std::string top = make_chain(e, c);
    std::vector<std::byte> model = qemu_view(e, top, "qcow2");
    REQUIRE(model.size() == c.size);
    // What a deallocated cluster shows: the base (v2 has no zero flag to hide it).
    std::vector<std::byte> base_view(c.size);
    if (c.base != base_kind::none) {
        std::string fmt = c.base == base_kind::raw ? "raw" : "qcow2";
        auto b = qemu_view(e, e.path("base." + fmt), fmt);
        std::memcpy(base_view.data(), b.data(), std::min<std::size_t>(b.size(), base_view.size()));
    }

    const std::uint64_t reftable_before = reftable_offset(top);
    auto n = open_chain(e, c, top);
    REQUIRE(n->cluster_size() == c.cluster);
    REQUIRE(n->size() == c.size);
    REQUIRE(read_all(e, *n) == model);

    std::mt19937_64 rng(seed);
    const std::uint64_t cs = c.cluster;
    auto pick_range = [&](std::uint64_t& off, std::uint64_t& len) {
        std::uint64_t max_len = std::min<std::uint64_t>(c.size, std::max<std::uint64_t>(4 * cs, 256 * 1024));
        len = 1 + rng() % max_len;
        off = rng() % c.size;
        if (rng() % 2) {   // cluster aligned start and length, as jobs and NBD clients send
            off = off / cs * cs;
            len = std::max<std::uint64_t>(cs, len / cs * cs);
        }
        if (off + len > c.size)
            len = c.size - off;
    };
    for (unsigned i = 0; i < c.ops; ++i) {
        std::uint64_t off, len;
        pick_range(off, len);
        INFO("op " << i << " off " << off << " len " << len);
        unsigned op = rng() % 100;
        if (op < 55) {
            std::vector<std::byte> data(len);
            std::uint64_t pat = rng();
            for (std::size_t k = 0; k < len; ++k)
                data[k] = std::byte((pat >> (k % 8 * 8)) + k / 8);
            REQUIRE(e.run(n->write(off, data)));
            std::memcpy(model.data() + off, data.data(), len);
        } else if (op < 72) {
            zero_flags zf{.may_unmap = (rng() % 2) == 0};
            REQUIRE(e.run(n->write_zeroes(off, len, zf)));
            std::memset(model.data() + off, 0, len);
        } else if (op < 82) {
            REQUIRE(e.run(n->discard(off, len)));
            std::uint64_t end = off + len;
            std::uint64_t a = (off + cs - 1) / cs * cs;
            std::uint64_t b = end == c.size ? c.size : end / cs * cs;
            for (std::uint64_t p = a; p < b; ++p)
                model[p] = (!c.v3 && c.base != base_kind::none) ? base_view[p] : std::byte{0};
        } else {
            std::vector<std::byte> got(len);
            REQUIRE(e.run(n->read(off, got)));
            REQUIRE(std::memcmp(got.data(), model.data() + off, len) == 0);
        }
    }
    REQUIRE(e.run(n->flush()));
    REQUIRE(read_all(e, *n) == model);
    n.reset();   // close (releases the image locks) before qemu-img looks at it
    CHECK((reftable_offset(top) != reftable_before) == c.reftable_grows);
    check_image(e, top, model);
}

} // namespace

TEST_CASE("block: qcow2 random workloads match a raw model and pass qemu-img check", "[qcow2]")
{
    const std::uint64_t mib = 1 << 20;
    std::vector<config> configs = {
        {65536, true, base_kind::none, 16 * mib},
        {65536, false, base_kind::none, 16 * mib},
        {512, true, base_kind::none, 16 * mib + 1536, 300, true},
        {4096, true, base_kind::qcow2, 8 * mib},
        {4096, false, base_kind::raw, 8 * mib + 512},
        {65536, true, base_kind::raw, 12 * mib},
        {2 * mib, true, base_kind::qcow2, 20 * mib, 60},
        {1024, false, base_kind::qcow2, 3 * mib},
    };
    unsigned seed = 1;
    for (const config& c : configs) {
        DYNAMIC_SECTION("cluster " << c.cluster << (c.v3 ? " v3" : " v2") << " base " << int(c.base))
        {
            workload(c, seed);
        }
        ++seed;
    }
}

TEST_CASE("block: qcow2 reads what qemu-io wrote, including compressed and zero clusters", "[qcow2]")
{
    env e;
    std::string src = e.path("src.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + src + " 4M") == 0);
    REQUIRE(sh("qemu-io -f qcow2 -c 'write -P 0x33 0 1M' -c 'write -P 0x44 1536 3000' -c 'write -z 512k 128k' " + src +
               " >/dev/null") == 0);
    // A compressed copy: every written cluster becomes a compressed cluster.
    std::string comp = e.path("comp.qcow2");
    REQUIRE(sh("qemu-img convert -c -f qcow2 -O qcow2 " + src + " " + comp) == 0);
    auto model = qemu_view(e, src, "qcow2");
    {
        auto n = e.qcow2(comp, true);
        REQUIRE(ok(n));
        REQUIRE(read_all(e, **n) == model);
        auto st = e.run((*n)->block_status(0, 4 << 20));
        REQUIRE(st.has_value());
        CHECK((st->flags & status_allocated) != 0);
        CHECK((st->flags & status_data) != 0);
    }
    // Partial writes over compressed clusters: copy-on-write from the inflated data, and the
    // compressed clusters are dereferenced.
    auto n = e.qcow2(comp);
    REQUIRE(ok(n));
    std::vector<std::byte> data(777, std::byte{0xee});
    REQUIRE(e.run((*n)->write(70000, data)));
    std::memset(model.data() + 70000, 0xee, data.size());
    REQUIRE(e.run((*n)->write_zeroes(0, 65536, {.may_unmap = true})));
    std::memset(model.data(), 0, 65536);
    REQUIRE(read_all(e, **n) == model);
    REQUIRE(e.run((*n)->flush()));   // metadata is write-back: the graph flushes before a close
    n->reset();
    check_image(e, comp, model);
}

TEST_CASE("block: qcow2 block status per layer", "[qcow2]")
{
    env e;
    config c{65536, true, base_kind::qcow2, 4 << 20};
    std::string top = make_chain(e, c);   // base: data up to 2 MiB + 1536, zero cluster at 64k
    auto n = open_chain(e, c, top);
    std::vector<std::byte> d(65536, std::byte{1});
    REQUIRE(e.run(n->write(3 * 65536, d)));
    REQUIRE(e.run(n->write_zeroes(4 * 65536, 65536, {})));

    auto at = [&](std::uint64_t off, std::uint64_t len) {
        auto r = e.run(n->block_status(off, len));
        REQUIRE(r.has_value());
        return *r;
    };
    auto s = at(0, 65536);   // from the base: data, not allocated in the top
    CHECK(s.flags == status_data);
    s = at(3 * 65536, 2 * 65536);
    CHECK(s.flags == (status_data | status_allocated));
    CHECK(s.length == 65536);
    s = at(4 * 65536, 65536);
    CHECK(s.flags == (status_zero | status_allocated));
    s = at(3 << 20, 65536);   // past the base's end: zeroes, unallocated
    CHECK(s.flags == status_zero);
    CHECK(n->zero_init() == false);
    const auto* info = qcow2_info(*n);
    REQUIRE(info);
    CHECK(info->backing_file == "base.qcow2");
    CHECK(info->backing_format == "qcow2");
    CHECK(info->version == 3);
}

namespace {

asio::awaitable<void> write_piece(node* n, std::uint64_t off, std::byte fill, unsigned* left)
{
    std::vector<std::byte> d(512, fill);
    auto r = co_await n->write(off, d);
    if (!r)
        throw std::runtime_error("write failed");
    --*left;
}

} // namespace

TEST_CASE("block: qcow2 concurrent writes into one unallocated cluster are all kept", "[qcow2]")
{
    env e;
    config c{65536, true, base_kind::raw, 4 << 20};
    std::string top = make_chain(e, c);
    auto model = qemu_view(e, top, "qcow2");
    auto n = open_chain(e, c, top);
    unsigned left = 0;
    // 64 writes in flight at once: 4 clusters x 16 pieces, interleaved.
    for (unsigned k = 0; k < 16; ++k)
        for (unsigned cl = 0; cl < 4; ++cl) {
            std::uint64_t off = cl * 65536 + k * 4096 + 512;
            std::byte fill{static_cast<unsigned char>(k * 4 + cl + 1)};
            std::memset(model.data() + off, static_cast<int>(fill), 512);
            ++left;
            asio::co_spawn(e.ctx, write_piece(n.get(), off, fill, &left), asio::detached);
        }
    e.ctx.restart();
    e.ctx.run_for(std::chrono::seconds(60));
    REQUIRE(left == 0);
    REQUIRE(read_all(e, *n) == model);
    REQUIRE(e.run(n->flush()));
    n.reset();
    check_image(e, top, model);
}

namespace {

asio::awaitable<void> fill_range(node* n, std::uint64_t off, std::uint64_t len, std::byte fill, unsigned* left)
{
    std::vector<std::byte> d(len, fill);
    auto r = co_await n->write(off, d);
    if (!r)
        throw std::runtime_error("write failed");
    --*left;
}

asio::awaitable<void> flush_node(node* n, unsigned* left)
{
    auto r = co_await n->flush();
    if (!r)
        throw std::runtime_error("flush failed");
    --*left;
}

asio::awaitable<void> discard_range(node* n, std::uint64_t off, std::uint64_t len, unsigned* left)
{
    auto r = co_await n->discard(off, len);
    if (!r)
        throw std::runtime_error("discard failed");
    --*left;
}

} // namespace

TEST_CASE("block: qcow2 reuses freed clusters, with writes and discards in flight", "[qcow2]")
{
    env e;
    const std::uint64_t cs = 65536, mib = 1 << 20;
    std::string img = e.path("r.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " 8M") == 0);
    REQUIRE(sh("qemu-io -f qcow2 -c 'write -P 0x11 0 2M' " + img + " >/dev/null") == 0);
    std::vector<std::byte> model(8 * mib);
    auto q = e.qcow2(img);
    REQUIRE(ok(q));
    auto n = *q;
    // Per cluster k of the first 2 MiB, in this lock order: an in-place write (which maps the
    // cluster, then writes it without the metadata lock), a discard that frees the cluster,
    // and an allocating write elsewhere. Handing the freed cluster to that allocation while
    // the first write is in flight would let the first write land in the new data. Freed
    // clusters become free at the flush after the discard, so a flush follows each trio. (On a
    // fast file the first write is usually done by then, so this mostly shows that reuse under
    // concurrency keeps every byte and the image consistent.)
    unsigned left = 0;
    for (std::uint64_t k = 0; k < 32; ++k) {
        left += 4;
        asio::co_spawn(e.ctx, fill_range(n.get(), k * cs, cs, std::byte{0xaa}, &left), asio::detached);
        asio::co_spawn(e.ctx, discard_range(n.get(), k * cs, cs, &left), asio::detached);
        asio::co_spawn(e.ctx, flush_node(n.get(), &left), asio::detached);
        const std::byte fill{static_cast<unsigned char>(k + 1)};
        asio::co_spawn(e.ctx, fill_range(n.get(), 4 * mib + k * cs, cs, fill, &left), asio::detached);
        std::memset(model.data() + 4 * mib + k * cs, static_cast<int>(fill), cs);
    }
    e.ctx.restart();
    e.ctx.run_for(std::chrono::seconds(60));
    REQUIRE(left == 0);
    REQUIRE(read_all(e, *n) == model);
    REQUIRE(e.run(n->flush()));
    const auto size_before = std::filesystem::file_size(img);

    // Nothing is in flight now: clusters freed by a discard take the next 2 MiB of data,
    // once the discard is durable.
    unsigned one = 1;
    e.run_void(discard_range(n.get(), 4 * mib, 2 * mib, &one));
    REQUIRE(one == 0);
    REQUIRE(e.run(n->flush()));
    std::memset(model.data() + 4 * mib, 0, 2 * mib);
    std::vector<std::byte> data(2 * mib, std::byte{0x77});
    REQUIRE(e.run(n->write(6 * mib, data)));
    std::memset(model.data() + 6 * mib, 0x77, 2 * mib);
    REQUIRE(e.run(n->flush()));
    CHECK(std::filesystem::file_size(img) == size_before);
    REQUIRE(read_all(e, *n) == model);
    n.reset();
    check_image(e, img, model);
}

namespace {

/// Passes everything to its file child; once armed, holds the next write until released.
class gate_node final : public forwarding_node {
public:
    gate_node(node_options o, std::shared_ptr<node> f, asio::io_context& ctx)
        : forwarding_node(std::move(o), std::move(f)), timer_(ctx, asio::steady_timer::time_point::max())
    {
    }

    bool armed = false;
    bool holding = false;
    void release() { timer_.cancel(); }

protected:
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool fua) override
    {
        if (std::exchange(armed, false)) {
            holding = true;
            co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
            holding = false;
        }
        co_return co_await forwarding_node::do_write(off, buf, fua);
    }

private:
    asio::steady_timer timer_;
};

/// Runs `a` until it is done, even while other work (the held write) stays pending.
template <class T>
T run_until_done(env& e, asio::awaitable<T> a)
{
    std::optional<T> out;
    asio::co_spawn(e.ctx, std::move(a), [&](std::exception_ptr ep, T v) {
        if (ep)
            std::rethrow_exception(ep);
        out.emplace(std::move(v));
    });
    e.ctx.restart();
    while (!out && e.ctx.run_one() > 0) {}
    REQUIRE(out.has_value());
    return std::move(*out);
}

} // namespace

TEST_CASE("block: qcow2 holds a freed cluster back while a write that mapped it is in flight", "[qcow2]")
{
    // An in-place write maps its cluster and writes without the metadata lock. If a discard
    // frees that cluster meanwhile and an allocation takes it, the late write would land in
    // the new owner's data. The freed cluster must stay out of reuse until the write is done.
    env e;
    const std::uint64_t cs = 65536;
    std::string img = e.path("h.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " 4M") == 0);
    auto f = e.file(img, false);
    REQUIRE(ok(f));
    auto gate = std::make_shared<gate_node>(e.opts(false), *f, e.ctx);
    auto q = e.run(open_qcow2(e.opts(false), gate, {}));
    REQUIRE(ok(q));
    auto n = *q;
    std::vector<std::byte> a(cs, std::byte{0x11});
    REQUIRE(e.run(n->write(0, a)));   // guest cluster 0 gets a host cluster
    REQUIRE(e.run(n->flush()));

    gate->armed = true;
    unsigned left = 1;
    asio::co_spawn(e.ctx, fill_range(n.get(), 0, 4096, std::byte{0xaa}, &left), asio::detached);
    e.ctx.restart();
    while (!gate->holding && e.ctx.run_one() > 0) {}
    REQUIRE(gate->holding);   // the in-place write has its mapping and waits at the file

    REQUIRE(run_until_done(e, n->discard(0, cs)));
    REQUIRE(run_until_done(e, n->flush()));   // the discard is durable: the old cluster is free now
    std::vector<std::byte> b(cs, std::byte{0xbb});
    REQUIRE(run_until_done(e, n->write(cs, b)));   // an allocation, which must not get that cluster
    REQUIRE(run_until_done(e, n->flush()));
    REQUIRE(gate->holding);

    gate->release();
    e.ctx.restart();
    e.ctx.run_for(std::chrono::seconds(10));
    REQUIRE(left == 0);
    std::vector<std::byte> back(cs);
    REQUIRE(e.run(n->read(cs, back)));
    CHECK(back == b);
    REQUIRE(e.run(n->flush()));
    n.reset();
    gate.reset();
    std::string out;
    CHECK(sh("qemu-img check -f qcow2 " + img, &out) == 0);
}

namespace {

/// Counts how often the qcow2 driver resizes its file.
class truncate_counting_node : public forwarding_node {
public:
    using forwarding_node::forwarding_node;
    unsigned truncates = 0;

protected:
    asio::awaitable<result<void>> do_truncate(std::uint64_t size) override
    {
        ++truncates;
        co_return co_await forwarding_node::do_truncate(size);
    }
};

std::uint64_t image_end_offset(const std::string& img)
{
    std::string out;
    REQUIRE(sh("qemu-img check -U --output=json " + img + " | jq '.\"image-end-offset\"'", &out) == 0);
    return std::stoull(out);
}

} // namespace

TEST_CASE("block: qcow2 grows its file ahead of allocations and trims it at close and read-only", "[qcow2]")
{
    env e;
    const std::uint64_t mib = 1 << 20;
    const std::string img = e.path("g.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 " + img + " 128M") == 0);
    auto f = e.file(img, false);
    REQUIRE(ok(f));
    auto counting = std::make_shared<truncate_counting_node>(e.opts(false), *f);
    auto q = e.run(open_qcow2(e.opts(false), counting, {}));
    REQUIRE(ok(q));
    auto n = *q;
    std::vector<std::byte> piece(mib);
    for (std::uint64_t i = 0; i < 64; ++i) {
        std::fill(piece.begin(), piece.end(), std::byte(0x40 + i));
        REQUIRE(e.run(n->write(i * mib, piece)));
    }
    REQUIRE(e.run(n->flush()));
    // 64 allocating writes (and an L2 table); one resize each would be 65. Small files grow
    // exactly, from 8 MiB on by an eighth of their size.
    CHECK(counting->truncates <= 36);
    CHECK(std::filesystem::file_size(img) > image_end_offset(img));
    REQUIRE(sh("qemu-img check -U -q " + img) == 0);

    SECTION("closing trims the tail")
    {
        REQUIRE(n->close_work());
        REQUIRE(e.run(n->before_close()));
        REQUIRE(e.run(n->flush()));
        CHECK_FALSE(n->close_work());
    }
    SECTION("turning read-only trims the tail")
    {
        REQUIRE(ok(e.run(reopen_read_only(*n, true))));
        CHECK(n->read_only());
        CHECK_FALSE(n->close_work());
    }
    CHECK(std::filesystem::file_size(img) == image_end_offset(img));
    REQUIRE(sh("qemu-img check -U -q " + img) == 0);
    for (std::uint64_t i = 0; i < 64; i += 7)
        CHECK(sh("qemu-io -r -U -f qcow2 -c 'read -P " + std::to_string(0x40 + i) + " " + std::to_string(i * mib) +
                 " 1M' " + img + " | grep -q 'read 1048576'") == 0);
}
