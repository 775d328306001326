// SPDX-License-Identifier: MIT
// Large I/O buffers on transparent huge pages: placement, sharing, return to the kernel, and
// (where the kernel has them) huge pages behind the memory.
#include "bjd/io/buffer.hpp"
#include "bjd/io/huge_pages.hpp"

#include "skip.hpp"

#include <catch2/catch.hpp>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>

namespace hp = bjd::io::huge_pages;

namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;

std::uintptr_t addr(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

/// Whether [p, p + n) is mapped: mincore fails with ENOMEM on unmapped memory.
bool mapped(const void* p, std::size_t n)
{
    std::vector<unsigned char> vec((n + 4095) / 4096);
    if (::mincore(const_cast<void*>(p), n, vec.data()) == 0)
        return true;
    REQUIRE(errno == ENOMEM);
    return false;
}

/// A line of /proc/self/smaps about the mapping that holds `p`: the text after `key`.
std::string smaps_field(const void* p, const std::string& key)
{
    std::ifstream smaps("/proc/self/smaps");
    std::string line;
    bool inside = false;
    while (std::getline(smaps, line)) {
        unsigned long lo = 0, hi = 0;
        if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
            inside = addr(p) >= lo && addr(p) < hi;
            continue;
        }
        if (inside && line.rfind(key, 0) == 0)
            return line.substr(key.size());
    }
    return {};
}

} // namespace

TEST_CASE("io: huge-page buffer sizes round to powers of two, then to whole pages", "[io]")
{
    CHECK(hp::footprint(hp::min_size) == 256 * KiB);
    CHECK(hp::footprint(300 * KiB) == 512 * KiB);
    CHECK(hp::footprint(1 * MiB) == 1 * MiB);
    CHECK(hp::footprint(2 * MiB) == 2 * MiB);
    CHECK(hp::footprint(3 * MiB) == 4 * MiB);
    CHECK(hp::footprint(4 * MiB + 1) == 6 * MiB);
}

TEST_CASE("io: buffers of one size share a huge page, which goes back with the last", "[io]")
{
    const std::size_t before = hp::shared_pages();
    void* a = hp::allocate(1 * MiB);
    void* b = hp::allocate(1 * MiB);
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a != b);
    // Both halves of one 2 MiB page: each lies inside a huge page, and they take one page.
    CHECK(addr(a) / hp::page_size == addr(b) / hp::page_size);
    CHECK(hp::shared_pages() == before + 1);

    // Another size takes another page.
    void* c = hp::allocate(512 * KiB);
    REQUIRE(c);
    CHECK(addr(c) / hp::page_size != addr(a) / hp::page_size);
    CHECK(addr(c) % (512 * KiB) == 0);
    CHECK(hp::shared_pages() == before + 2);

    std::memset(a, 0xa5, 1 * MiB);   // the memory is writable, all of it
    std::memset(b, 0x5a, 1 * MiB);
    const auto* page = reinterpret_cast<const std::byte*>(addr(a) / hp::page_size * hp::page_size);
    hp::release(a, 1 * MiB);
    CHECK(mapped(page, hp::page_size));   // b still lives there
    CHECK(static_cast<unsigned char*>(b)[0] == 0x5a);
    // The freed half is handed out again before a new page is mapped.
    void* again = hp::allocate(1 * MiB);
    CHECK(again == a);
    hp::release(again, 1 * MiB);
    hp::release(b, 1 * MiB);
    CHECK_FALSE(mapped(page, hp::page_size));
    hp::release(c, 512 * KiB);
    CHECK(hp::shared_pages() == before);
}

TEST_CASE("io: a buffer larger than a huge page has a mapping of its own", "[io]")
{
    const std::size_t before = hp::shared_pages();
    void* p = hp::allocate(3 * MiB);
    REQUIRE(p);
    CHECK(addr(p) % hp::page_size == 0);
    CHECK(hp::shared_pages() == before);
    std::memset(p, 1, 3 * MiB);
    CHECK(mapped(p, 4 * MiB));   // rounded up to whole pages
    hp::release(p, 3 * MiB);
    CHECK_FALSE(mapped(p, 4 * MiB));
}

TEST_CASE("io: the memory of large buffers is counted as mapped and as held", "[io]")
{
    const hp::usage before = hp::current();
    void* a = hp::allocate(1 * MiB);
    REQUIRE(a);
    hp::usage u = hp::current();
    CHECK(u.held_bytes == before.held_bytes + 1 * MiB);
    // A new page, unless another 1 MiB buffer left half of one free: the page is counted whole.
    CHECK((u.mapped_bytes == before.mapped_bytes + hp::page_size || u.mapped_bytes == before.mapped_bytes));
    void* b = hp::allocate(300 * KiB);   // held as its footprint, 512 KiB
    void* c = hp::allocate(3 * MiB);     // a mapping of its own, two whole pages
    REQUIRE(b);
    REQUIRE(c);
    const hp::usage all = hp::current();
    CHECK(all.held_bytes == before.held_bytes + 1 * MiB + 512 * KiB + 4 * MiB);
    CHECK(all.mapped_bytes >= u.mapped_bytes + 4 * MiB);
    CHECK(all.mapped_bytes >= all.held_bytes);
    hp::release(c, 3 * MiB);
    hp::release(b, 300 * KiB);
    hp::release(a, 1 * MiB);
    const hp::usage after = hp::current();
    CHECK(after.held_bytes == before.held_bytes);
    CHECK(after.mapped_bytes == before.mapped_bytes);
}

TEST_CASE("io: aligned_buffer takes large buffers from huge pages, small ones from the heap", "[io]")
{
    if (!bjd::io::buffers_on_huge_pages) {
        // An AddressSanitizer build keeps heap buffers, with their redzones.
        const std::size_t before = hp::shared_pages();
        bjd::io::aligned_buffer big(1 * MiB);
        CHECK(hp::shared_pages() == before);
        return;
    }
    const std::size_t before = hp::shared_pages();
    {
        bjd::io::aligned_buffer big(1 * MiB);
        bjd::io::aligned_buffer odd(700 * KiB, 1 * MiB);
        CHECK(hp::shared_pages() == before + 1);
        CHECK(addr(big.data()) / hp::page_size == addr(odd.data()) / hp::page_size);
        bjd::io::aligned_buffer small(64 * KiB);
        CHECK(hp::shared_pages() == before + 1);
        // A moved buffer still frees its memory to where it came from.
        bjd::io::aligned_buffer moved = std::move(big);
        CHECK(moved.capacity() == 1 * MiB);
    }
    CHECK(hp::shared_pages() == before);
}

TEST_CASE("io: huge-page buffers taken and given back from several threads", "[io]")
{
    const std::size_t before = hp::shared_pages();
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([t] {
            const std::size_t n = (t % 2 ? 1 : 2) * 256 * KiB;
            for (int i = 0; i < 200; ++i) {
                std::vector<void*> held;
                for (int k = 0; k < 5; ++k) {
                    void* p = hp::allocate(n);
                    if (p)
                        std::memset(p, t, 4096);
                    held.push_back(p);
                }
                for (void* p : held)
                    hp::release(p, n);
            }
        });
    }
    for (auto& th : threads)
        th.join();
    CHECK(hp::shared_pages() == before);
}

TEST_CASE("io: a 1 MiB buffer is advised for huge pages", "[io]")
{
    void* b = hp::allocate(1 * MiB);
    REQUIRE(b);
    std::istringstream flags(smaps_field(b, "VmFlags:"));
    std::vector<std::string> words;
    for (std::string w; flags >> w;)
        words.push_back(w);
    CHECK_THAT(words, Catch::Matchers::VectorContains(std::string("hg")));   // MADV_HUGEPAGE
    hp::release(b, 1 * MiB);
}

TEST_CASE("io: a 1 MiB buffer lies on a huge page where the kernel has them", "[io][may-skip]")
{
    if (!hp::available()) {
        bjd::test::skip("transparent huge pages are off (/sys/kernel/mm/transparent_hugepage/enabled)");
        return;
    }
    void* b = hp::allocate(1 * MiB);
    REQUIRE(b);
    std::memset(b, 7, 1 * MiB);   // fault the page in
    const long kib = std::stol(smaps_field(b, "AnonHugePages:"));
    hp::release(b, 1 * MiB);
    if (kib == 0) {
        // THP is on, but this fault got small pages: memory too fragmented at the moment.
        bjd::test::skip("the kernel had no free huge page for this test");
        return;
    }
    CHECK(kib >= 2048);
}
