// SPDX-License-Identifier: MIT
// aligned_buffer capacity and the buffer pool's reuse rules.
#include "bjd/io/buffer.hpp"

#include <catch2/catch.hpp>

#include <cstdint>

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

    // Over the cap, and small or odd-sized buffers, are freed rather than kept.
    pool.put(aligned_buffer(2u << 20));
    CHECK(pool.cached_bytes() == (3u << 20));
    pool.put(aligned_buffer(4096));
    pool.put(aligned_buffer(3u << 16));
    pool.put(aligned_buffer());
    CHECK(pool.cached_bytes() == (3u << 20));

    // Small requests are plain allocations.
    aligned_buffer s = pool.get(4096);
    CHECK(s.capacity() == 4096);
    pool.clear();
    CHECK(pool.cached_bytes() == 0);
}
