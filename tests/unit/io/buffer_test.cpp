// SPDX-License-Identifier: MIT
// aligned_buffer capacity and the buffer pool's reuse and registration rules.
#include "bjd/io/buffer.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <vector>

using bjd::io::aligned_buffer;
using bjd::io::buffer_pool;

TEST_CASE("io: aligned_buffer keeps a size within its capacity", "[io]")
{
    aligned_buffer b(1000, 8192);
    CHECK(b.size() == 1000);
    CHECK(b.capacity() == 8192);
    CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % bjd::io::direct_alignment == 0);
    b.resize(8192);
    CHECK(b.size() == 8192);
    b.resize(10000);   // clamped
    CHECK(b.size() == 8192);
    aligned_buffer plain(5000);
    CHECK(plain.capacity() == 8192);
    CHECK(aligned_buffer().capacity() == 0);
}

TEST_CASE("io: buffer_pool reuses large buffers by power-of-two class", "[io]")
{
    buffer_pool pool(4u << 20);
    aligned_buffer a = pool.get(1u << 20);
    CHECK(a.size() == (1u << 20));
    CHECK(a.capacity() == (1u << 20));
    std::byte* p = a.data();
    pool.put(std::move(a));
    CHECK(pool.cached_bytes() == (1u << 20));

    // A smaller request of the same class gets the same memory, with its own size.
    aligned_buffer b = pool.get(700u << 10);
    CHECK(b.data() == p);
    CHECK(b.size() == (700u << 10));
    CHECK(pool.cached_bytes() == 0);
    pool.put(std::move(b));

    // Another class does not take it.
    aligned_buffer c = pool.get(2u << 20);
    CHECK(c.data() != p);
    CHECK(c.capacity() == (2u << 20));
    pool.put(std::move(c));
    CHECK(pool.cached_bytes() == (3u << 20));

    // Over the cap, and odd-sized buffers, are freed rather than kept.
    pool.put(aligned_buffer(2u << 20));
    CHECK(pool.cached_bytes() == (3u << 20));
    pool.put(aligned_buffer(3u << 16));
    pool.put(aligned_buffer());
    CHECK(pool.cached_bytes() == (3u << 20));

    // Small requests have classes too, from one alignment unit up: a 512-byte and a 4 KiB
    // request share one, and an 8 KiB request does not take its buffer.
    aligned_buffer s = pool.get(512);
    CHECK(s.size() == 512);
    CHECK(s.capacity() == 4096);
    std::byte* sp = s.data();
    pool.put(std::move(s));
    CHECK(pool.cached_bytes() == (3u << 20) + 4096);
    aligned_buffer s2 = pool.get(4096);
    CHECK(s2.data() == sp);
    CHECK(s2.size() == 4096);
    aligned_buffer s3 = pool.get(5000);
    CHECK(s3.data() != sp);
    CHECK(s3.capacity() == 8192);
    pool.clear();
    CHECK(pool.cached_bytes() == 0);
}

namespace {
/// Stands in for an engine's table of registrations: it hands out slots, and records which
/// were released and what the memory held when they were (the buffer must still be alive).
struct fake_slots final : bjd::io::detail::fixed_slots {
    std::vector<std::span<std::byte>> added;
    std::vector<int> released;
    std::vector<std::byte> first_byte_at_release;

    void release(int slot) noexcept override
    {
        released.push_back(slot);
        first_byte_at_release.push_back(added[static_cast<std::size_t>(slot)][0]);
    }
};
} // namespace

TEST_CASE("io: buffer_pool registers its large buffers once and releases them before freeing", "[io]")
{
    auto slots = std::make_shared<fake_slots>();
    buffer_pool pool(4u << 20);
    pool.register_with([&](std::span<std::byte> b) {
        slots->added.push_back(b);
        return bjd::io::registered_range(slots, static_cast<int>(slots->added.size() - 1));
    });

    // A 1 MiB buffer is registered whole (its capacity), once: reuse keeps the registration.
    aligned_buffer a = pool.get(600u << 10);
    REQUIRE(slots->added.size() == 1);
    CHECK(a.registered());
    CHECK(slots->added[0].data() == a.data());
    CHECK(slots->added[0].size() == (1u << 20));
    pool.put(std::move(a));
    aligned_buffer again = pool.get(1u << 20);
    CHECK(again.registered());
    CHECK(slots->added.size() == 1);
    CHECK(slots->released.empty());

    // Below min_registered: pooled, not registered.
    aligned_buffer mid = pool.get(128u << 10);
    CHECK_FALSE(mid.registered());
    CHECK(slots->added.size() == 1);

    // Freed (moved over, then dropped): the registration is released while the memory still
    // holds what was written into it.
    again.data()[0] = std::byte{0x5a};
    aligned_buffer other = pool.get(2u << 20);
    REQUIRE(slots->added.size() == 2);
    other = std::move(again);
    REQUIRE(slots->released == std::vector<int>{1});
    CHECK(other.registered());
    other = aligned_buffer();
    REQUIRE(slots->released == (std::vector<int>{1, 0}));
    CHECK(slots->first_byte_at_release[1] == std::byte{0x5a});
}
