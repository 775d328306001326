// SPDX-License-Identifier: MIT
// Write thresholds (block-set-write-threshold), with QEMU 7.2's semantics as
// qemu-storage-daemon shows them (tests/qmp/block/write-threshold.qmp): a request whose end
// lies beyond the threshold fires once, before it is carried out, with amount = end -
// threshold, and disarms it; 0 disarms; writes, write-zeroes and passed-down discards count;
// ranges are measured as QEMU's block layer pads them.
#include "bjd/block/driver.hpp"

#include <boost/asio/io_context.hpp>

#include "run_request.hpp"

#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

using namespace bjd;
using namespace bjd::block;
namespace asio = boost::asio;

namespace {

constexpr std::uint64_t MiB = 1 << 20;

/// A RAM node whose data path logs what reaches the driver; writes fail while `fail` is set.
class mem_node final : public node {
public:
    mem_node(node_options o, std::uint64_t size, std::vector<std::string>& log)
        : node(std::move(o)), data_(size, std::byte{0}), log_(log)
    {
    }
    std::string_view driver() const noexcept override { return "mem"; }
    std::uint64_t size() const noexcept override { return data_.size(); }
    std::uint32_t write_padding() const noexcept override { return padding; }
    bool can_discard() const noexcept override { return discards; }

    std::uint32_t padding = 1;
    bool discards = true;
    bool fail = false;

protected:
    asio::awaitable<result<void>> do_read(std::uint64_t off, std::span<std::byte> buf) override
    {
        std::memcpy(buf.data(), data_.data() + off, buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool) override
    {
        log_.push_back(name() + " write");
        if (fail)
            co_return errno_error(EIO);
        std::memcpy(data_.data() + off, buf.data(), buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t off, std::uint64_t len, zero_flags) override
    {
        log_.push_back(name() + " write_zeroes");
        std::memset(data_.data() + off, 0, len);
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t, std::uint64_t) override
    {
        log_.push_back(name() + " discard");
        co_return result<void>{};
    }

private:
    std::vector<std::byte> data_;
    std::vector<std::string>& log_;
};

struct fixture {
    asio::io_context loop;
    std::vector<std::string> log;   ///< driver calls and events, in order
    std::shared_ptr<mem_node> mem = make({.name = "mem"});
    std::vector<std::byte> buf;

    std::shared_ptr<mem_node> make(node_options o) { return std::make_shared<mem_node>(std::move(o), 4 * MiB, log); }

    /// Arms `n`; each crossing is logged as "event NODE AMOUNT THRESHOLD".
    void arm(node& n, std::uint64_t threshold)
    {
        n.set_write_threshold(threshold, [this](const node& x, std::uint64_t amount, std::uint64_t t) {
            log.push_back("event " + x.name() + " " + std::to_string(amount) + " " + std::to_string(t));
        });
    }

    /// Runs one request to completion: 0 or its errno.
    template <class T>
    int run(asio::awaitable<result<T>> a)
    {
        return bjd::test::run_request(loop, std::move(a));
    }
    int write(node& n, std::uint64_t off, std::size_t len, std::byte fill = std::byte{0x5a})
    {
        buf.assign(len, fill);
        return run(n.write(off, std::span<const std::byte>(buf)));
    }
    int zero(node& n, std::uint64_t off, std::uint64_t len) { return run(n.write_zeroes(off, len)); }
    int discard(node& n, std::uint64_t off, std::uint64_t len) { return run(n.discard(off, len)); }

    /// The events logged since the last call, driver calls left out.
    std::vector<std::string> events()
    {
        std::vector<std::string> out;
        for (auto& l : log)
            if (l.rfind("event ", 0) == 0)
                out.push_back(l);
        log.clear();
        return out;
    }
};

using strings = std::vector<std::string>;

} // namespace

TEST_CASE_METHOD(fixture, "block: a write threshold fires once, past it, and disarms", "[block]")
{
    CHECK(mem->write_threshold() == 0);
    arm(*mem, MiB);
    CHECK(mem->write_threshold() == MiB);

    // Ending exactly at the threshold does not cross it.
    CHECK(write(*mem, 0, MiB) == 0);
    CHECK(events().empty());
    CHECK(mem->write_threshold() == MiB);

    // The amount is the request's end minus the threshold, wherever the request starts.
    CHECK(write(*mem, MiB - 4096, 8192) == 0);
    CHECK(events() == strings{"event mem 4096 1048576"});
    CHECK(mem->write_threshold() == 0);

    // Disarmed: further crossings say nothing.
    CHECK(write(*mem, MiB - 4096, 8192) == 0);
    CHECK(write(*mem, 2 * MiB, 4096) == 0);
    CHECK(events().empty());

    // Armed again, it fires again.
    arm(*mem, MiB);
    CHECK(write(*mem, MiB, 1) == 0);
    CHECK(events() == strings{"event mem 1 1048576"});
}

TEST_CASE_METHOD(fixture, "block: threshold 0 disarms, a new threshold replaces the armed one", "[block]")
{
    SECTION("0 disarms")
    {
        arm(*mem, MiB);
        arm(*mem, 0);
        CHECK(mem->write_threshold() == 0);
        CHECK(write(*mem, 3 * MiB, 4096) == 0);
        CHECK(events().empty());
    }
    SECTION("the last threshold counts")
    {
        arm(*mem, MiB);
        arm(*mem, 2 * MiB);
        CHECK(write(*mem, MiB, 4096) == 0);
        CHECK(events().empty());
        CHECK(write(*mem, 2 * MiB, 512) == 0);
        CHECK(events() == strings{"event mem 512 2097152"});
    }
    SECTION("2^64-1 (QEMU's -1) never fires")
    {
        arm(*mem, ~std::uint64_t{0});
        CHECK(write(*mem, 4 * MiB - 4096, 4096) == 0);
        CHECK(events().empty());
        CHECK(mem->write_threshold() == ~std::uint64_t{0});
    }
    SECTION("the hook may arm it again")
    {
        mem->set_write_threshold(MiB, [this](const node&, std::uint64_t amount, std::uint64_t) {
            log.push_back("event " + std::to_string(amount));
            mem->set_write_threshold(2 * MiB, [this](const node&, std::uint64_t a, std::uint64_t) {
                log.push_back("event again " + std::to_string(a));
            });
        });
        CHECK(write(*mem, MiB, 4096) == 0);
        CHECK(mem->write_threshold() == 2 * MiB);
        CHECK(write(*mem, 2 * MiB, 4096) == 0);
        CHECK(events() == strings{"event 4096", "event again 4096"});
        CHECK(mem->write_threshold() == 0);
    }
}

TEST_CASE_METHOD(fixture, "block: every write type counts; discard only when passed down", "[block]")
{
    SECTION("write")
    {
        arm(*mem, MiB);
        CHECK(write(*mem, MiB, 65536) == 0);
        CHECK(events() == strings{"event mem 65536 1048576"});
    }
    SECTION("write of zeroes with detect-zeroes (becomes write_zeroes)")
    {
        auto n = make({.name = "dz", .zeroes = node_options::detect_zeroes::on});
        arm(*n, MiB);
        CHECK(write(*n, MiB, 65536, std::byte{0}) == 0);
        CHECK(log == strings{"event dz 65536 1048576", "dz write_zeroes"});
    }
    SECTION("write_zeroes")
    {
        arm(*mem, MiB);
        CHECK(zero(*mem, MiB, 65536) == 0);
        CHECK(events() == strings{"event mem 65536 1048576"});
    }
    SECTION("discard with discard=unmap")
    {
        auto n = make({.name = "d", .discard_unmap = true});
        arm(*n, MiB);
        CHECK(discard(*n, MiB, 65536) == 0);
        CHECK(log == strings{"event d 65536 1048576", "d discard"});
    }
    SECTION("discard=ignore: the discard goes nowhere and does not count")
    {
        arm(*mem, MiB);
        CHECK(discard(*mem, MiB, 65536) == 0);
        CHECK(log.empty());
        CHECK(mem->write_threshold() == MiB);
    }
    SECTION("a driver without discard (null-co): does not count")
    {
        auto n = make({.name = "d", .discard_unmap = true});
        n->discards = false;
        arm(*n, MiB);
        CHECK(discard(*n, MiB, 65536) == 0);
        CHECK(log.empty());
        CHECK(n->write_threshold() == MiB);
    }
    SECTION("reads and flushes do not count")
    {
        arm(*mem, MiB);
        buf.resize(65536);
        CHECK(run(mem->read(2 * MiB, std::span<std::byte>(buf))) == 0);
        CHECK(run(mem->flush()) == 0);
        CHECK(events().empty());
    }
}

TEST_CASE_METHOD(fixture, "block: the threshold is checked before the request, whatever its outcome", "[block]")
{
    SECTION("a failing write fires, first")
    {
        mem->fail = true;
        arm(*mem, MiB);
        CHECK(write(*mem, MiB, 4096) == EIO);
        CHECK(log == strings{"event mem 4096 1048576", "mem write"});
    }
    SECTION("a request refused by the range check does not")
    {
        arm(*mem, MiB);
        CHECK(write(*mem, 4 * MiB, 4096) == EINVAL);
        CHECK(zero(*mem, 4 * MiB - 512, 4096) == EINVAL);
        CHECK(log.empty());
        CHECK(mem->write_threshold() == MiB);
    }
    SECTION("nor does a write to a read-only node")
    {
        auto n = make({.name = "ro", .read_only = true});
        arm(*n, MiB);
        CHECK(write(*n, MiB, 4096) == EPERM);
        CHECK(log.empty());
    }
}

TEST_CASE_METHOD(fixture, "block: each node of a request's path checks its own threshold, parents first", "[block]")
{
    auto raw = open_raw(node_options{.name = "r0"}, mem, 0, std::nullopt);
    REQUIRE(raw.has_value());
    node& top = **raw;

    SECTION("both armed")
    {
        arm(top, 3 * MiB);
        arm(*mem, 3 * MiB - 1);
        CHECK(write(top, 3 * MiB, 512) == 0);
        CHECK(events() == strings{"event r0 512 3145728", "event mem 513 3145727"});
    }
    SECTION("only the file node below")
    {
        arm(*mem, 2 * MiB);
        CHECK(write(top, 2 * MiB, 1) == 0);
        CHECK(events() == strings{"event mem 1 2097152"});
        CHECK(top.write_threshold() == 0);
    }
}

TEST_CASE_METHOD(fixture, "block: ranges are measured as QEMU pads them (cache.direct files)", "[block]")
{
    // The cases of tests/qmp/block/write-threshold.qmp's O_DIRECT part, where qsd padded to 512.
    mem->padding = 512;

    SECTION("a write is padded at both ends")
    {
        arm(*mem, MiB);
        CHECK(write(*mem, 1048570, 1000) == 0);
        CHECK(events() == strings{"event mem 1024 1048576"});
    }
    SECTION("write-zeroes: the head block ends at the threshold, the middle crosses it")
    {
        arm(*mem, MiB);
        CHECK(zero(*mem, 1048570, 1000) == 0);
        CHECK(events() == strings{"event mem 512 1048576"});
        arm(*mem, 1049000);
        CHECK(zero(*mem, 1048570, 1000) == 0);
        CHECK(events() == strings{"event mem 88 1049000"});
    }
    SECTION("write-zeroes: the head block crosses it")
    {
        arm(*mem, 1048000);
        CHECK(zero(*mem, 1048570, 1000) == 0);
        CHECK(events() == strings{"event mem 576 1048000"});
    }
    SECTION("write-zeroes within one block: the whole padded block")
    {
        arm(*mem, 1048000);
        CHECK(zero(*mem, 1048000, 10) == 0);
        CHECK(events() == strings{"event mem 64 1048000"});
    }
    SECTION("write-zeroes with an unaligned end only: middle, then the tail block")
    {
        arm(*mem, MiB + 512);
        CHECK(zero(*mem, MiB, 1000) == 0);   // middle [1M, 1M+512), tail [1M+512, 1M+1024)
        CHECK(events() == strings{"event mem 512 1049088"});
    }
    SECTION("discards are not padded")
    {
        auto n = make({.name = "d", .discard_unmap = true});
        n->padding = 512;
        arm(*n, MiB);
        CHECK(discard(*n, 1048570, 10) == 0);
        CHECK(events() == strings{"event d 4 1048576"});
    }
}

TEST_CASE_METHOD(fixture, "block: zero-length requests", "[block]")
{
    SECTION("an aligned zero-length write counts at its offset")
    {
        arm(*mem, MiB);
        CHECK(write(*mem, 2 * MiB, 0) == 0);
        CHECK(log == strings{"event mem 1048576 1048576"});   // and the driver is not called
    }
    SECTION("an unaligned one is dropped")
    {
        mem->padding = 512;
        arm(*mem, MiB);
        CHECK(write(*mem, 2 * MiB + 1, 0) == 0);
        CHECK(log.empty());
    }
    SECTION("a zero-length write-zeroes never counts")
    {
        arm(*mem, MiB);
        CHECK(zero(*mem, 2 * MiB, 0) == 0);
        CHECK(log.empty());
    }
    SECTION("a zero-length discard that is passed down counts")
    {
        auto n = make({.name = "d", .discard_unmap = true});
        arm(*n, MiB);
        CHECK(discard(*n, 2 * MiB, 0) == 0);
        CHECK(log == strings{"event d 1048576 1048576"});
    }
}
