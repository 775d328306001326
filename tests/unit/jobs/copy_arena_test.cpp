// SPDX-License-Identifier: MIT
// A copy's memory (lib/jobs/src/copy/copy_arena.hpp): pieces stay below the window, first fit
// from the start, never across two registrations, and live as long as their last holder.
#include "copy/copy_arena.hpp"
#include "bjd/io/engine.hpp"

#include "../skip.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <cstring>
#include <string>
#include <vector>

#include <sanitizer/asan_interface.h>
#include <sys/mman.h>
#include <unistd.h>

using bjd::jobs::detail::copy_arena;
namespace asio = boost::asio;
namespace io = bjd::io;

namespace {
constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

/// Where `p` starts in the arena whose first piece is at `base`.
std::size_t at(const std::shared_ptr<std::byte>& p, const std::byte* base)
{
    return static_cast<std::size_t>(p.get() - base);
}
} // namespace

TEST_CASE("copy_arena: pieces fill the window from its start and come back when freed", "[jobs]")
{
    asio::io_context ctx;
    auto eng = io::make_engine(ctx, io::backend::threads);
    auto arena = copy_arena::make(*eng, 64 * KiB, 32 * KiB);
    CHECK(arena->limit() == 32 * KiB);

    std::vector<std::shared_ptr<std::byte>> p;
    for (int i = 0; i < 8; ++i) {
        p.push_back(arena->take(4 * KiB));
        REQUIRE(p.back());
    }
    const std::byte* base = p[0].get();
    for (std::size_t i = 0; i < p.size(); ++i)
        CHECK(at(p[i], base) == i * 4 * KiB);
    CHECK(arena->held() == 32 * KiB);
#if defined(__SANITIZE_ADDRESS__)
    // Under AddressSanitizer what no piece holds is poisoned: an overrun past the last piece
    // is caught though no redzone follows it.
    CHECK_FALSE(__asan_address_is_poisoned(p[7].get() + 4 * KiB - 1));
    CHECK(__asan_address_is_poisoned(p[7].get() + 4 * KiB));
#endif
    // The window is full: nothing more until it grows or a piece comes back.
    CHECK_FALSE(arena->take(4 * KiB));
    CHECK_FALSE(arena->take(1));

    // A freed piece is the first fit for one its size; a larger one goes past it.
    p[2].reset();
    CHECK(arena->held() == 28 * KiB);
    CHECK_FALSE(arena->take(8 * KiB));
    arena->set_limit(64 * KiB);
    auto big = arena->take(8 * KiB);
    REQUIRE(big);
    CHECK(at(big, base) == 32 * KiB);
    auto small = arena->take(100);   // rounded up to 4 KiB, into the hole
    REQUIRE(small);
    CHECK(at(small, base) == 8 * KiB);
    CHECK(arena->held() == 40 * KiB);
    CHECK(arena->high_water() == 40 * KiB);

    // Lowered, the limit keeps new pieces below it; pieces above stay usable.
    arena->set_limit(16 * KiB);
    std::memset(big.get(), 0x5a, 8 * KiB);
    CHECK_FALSE(arena->take(4 * KiB));
    p[1].reset();
    auto again = arena->take(4 * KiB);
    REQUIRE(again);
    CHECK(at(again, base) == 4 * KiB);

    // A piece keeps the arena alive after its owner drops it (a request that a force-cancel
    // stopped waiting for).
    std::weak_ptr<copy_arena> weak = arena;
    arena.reset();
    CHECK_FALSE(weak.expired());
    p.clear();
    big.reset();
    small.reset();
    CHECK_FALSE(weak.expired());
    again.reset();
    CHECK(weak.expired());
}

TEST_CASE("copy_arena: no larger than its capacity, and a piece never spans two registrations", "[jobs][may-skip]")
{
    asio::io_context ctx;
    std::string why;
    auto eng = io::make_engine(ctx, io::backend::io_uring, {}, &why);
    if (eng->kind() != io::backend::io_uring) {
        bjd::test::skip("no io_uring here: " + why);
        return;
    }
    // The window grows from 1 to 2 MiB: two registrations, [0, 1 MiB) and [1 MiB, 2 MiB).
    auto arena = copy_arena::make(*eng, 2 * MiB, 1 * MiB);
    auto a = arena->take(768 * KiB);
    REQUIRE(a);
    CHECK_FALSE(arena->take(512 * KiB));   // 256 KiB left below the limit
    arena->set_limit(4 * MiB);             // clamped to the capacity
    CHECK(arena->limit() == 2 * MiB);
    // 256 KiB are free below 1 MiB, but not 512: the piece starts at the second range, not
    // at 768 KiB across the boundary.
    auto b = arena->take(512 * KiB);
    REQUIRE(b);
    CHECK(b.get() - a.get() == std::ptrdiff_t(1 * MiB));
    auto c = arena->take(256 * KiB);
    REQUIRE(c);
    CHECK(c.get() - a.get() == std::ptrdiff_t(768 * KiB));

    // Reads into each piece use its registration (io_uring's fixed buffers).
    int fd = ::memfd_create("copy_arena_test", 0);
    REQUIRE(fd >= 0);
    std::vector<std::byte> data(512 * KiB, std::byte{0x3c});
    REQUIRE(::pwrite(fd, data.data(), data.size(), 0) == ssize_t(data.size()));
    auto read = [&](std::byte* into, std::size_t len) {
        auto f = asio::co_spawn(ctx, eng->read(fd, {into, len}, 0), asio::use_future);
        ctx.restart();
        ctx.run();
        return f.get();
    };
    const auto fixed0 = eng->stats().fixed;
    REQUIRE(read(b.get(), 512 * KiB).value() == 512 * KiB);
    REQUIRE(read(c.get(), 256 * KiB).value() == 256 * KiB);
    CHECK(eng->stats().fixed == fixed0 + 2);
    CHECK(std::memcmp(b.get(), data.data(), 512 * KiB) == 0);
    ::close(fd);
    a.reset();
    b.reset();
    c.reset();
    arena.reset();   // the registrations end on the engine's thread, before the memory goes
}
