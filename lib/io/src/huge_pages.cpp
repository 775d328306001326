// SPDX-License-Identifier: MIT
#include "bjd/io/huge_pages.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include <sys/mman.h>

namespace bjd::io::huge_pages {

namespace {

/// A huge page shared by buffers of one size: bit i of `used` is the i-th block.
struct shared_page {
    std::byte* base;
    std::size_t block;
    std::uint32_t used;
};
static_assert(page_size / min_size <= 32, "a page's blocks must fit its mask");

std::mutex mu;
std::vector<shared_page> pages;   // guarded by mu
std::size_t own_bytes = 0;        // mappings of buffers above a page; guarded by mu
std::size_t held_bytes = 0;       // footprints of live buffers; guarded by mu

/// `bytes` (whole huge pages) of anonymous memory starting on a huge-page boundary, marked
/// for huge pages. mmap aligns to 4 KiB only, so one page more is mapped and the ends trimmed.
std::byte* map_aligned(std::size_t bytes) noexcept
{
    void* raw = ::mmap(nullptr, bytes + page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return nullptr;
    const auto start = reinterpret_cast<std::uintptr_t>(raw);
    const auto aligned = (start + page_size - 1) & ~std::uintptr_t(page_size - 1);
    if (aligned > start)
        ::munmap(raw, aligned - start);
    if (const auto tail = start + bytes + page_size - (aligned + bytes); tail > 0)
        ::munmap(reinterpret_cast<void*>(aligned + bytes), tail);
    // Advice only: without it (THP off) the memory is ordinary pages.
    (void)::madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
    return reinterpret_cast<std::byte*>(aligned);
}

} // namespace

std::size_t footprint(std::size_t n) noexcept
{
    if (n <= page_size)
        return std::bit_ceil(std::max(n, min_size));
    return (n + page_size - 1) / page_size * page_size;
}

void* allocate(std::size_t n) noexcept
{
    const std::size_t f = footprint(n);
    if (f > page_size) {
        std::byte* p = map_aligned(f);
        if (p) {
            std::lock_guard lock(mu);
            own_bytes += f;
            held_bytes += f;
        }
        return p;
    }
    const auto blocks = static_cast<unsigned>(page_size / f);
    const std::uint32_t full = blocks == 32 ? ~std::uint32_t{0} : (std::uint32_t{1} << blocks) - 1;
    std::lock_guard lock(mu);
    for (auto& p : pages) {
        if (p.block != f || p.used == full)
            continue;
        const int i = std::countr_one(p.used);
        p.used |= std::uint32_t{1} << i;
        held_bytes += f;
        return p.base + static_cast<std::size_t>(i) * f;
    }
    std::byte* base = map_aligned(page_size);
    if (!base)
        return nullptr;
    try {
        pages.push_back({base, f, 1});
    } catch (...) {
        ::munmap(base, page_size);
        return nullptr;
    }
    held_bytes += f;
    return base;
}

void release(void* ptr, std::size_t n) noexcept
{
    if (!ptr)
        return;
    const std::size_t f = footprint(n);
    if (f > page_size) {
        ::munmap(ptr, f);
        std::lock_guard lock(mu);
        own_bytes -= f;
        held_bytes -= f;
        return;
    }
    auto* p = static_cast<std::byte*>(ptr);
    std::lock_guard lock(mu);
    auto it = std::find_if(pages.begin(), pages.end(),
                           [p](const shared_page& s) { return p >= s.base && p < s.base + page_size; });
    if (it == pages.end())
        return;   // not ours: a caller's bug, but freeing it would be worse
    it->used &= ~(std::uint32_t{1} << ((p - it->base) / it->block));
    held_bytes -= f;
    if (it->used == 0) {
        ::munmap(it->base, page_size);
        pages.erase(it);
    }
}

bool available() noexcept
{
    try {
        std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
        std::string line;
        if (!std::getline(f, line))
            return false;   // no THP in this kernel
        return line.find("[always]") != std::string::npos || line.find("[madvise]") != std::string::npos;
    } catch (...) {
        return false;
    }
}

std::size_t shared_pages() noexcept
{
    std::lock_guard lock(mu);
    return pages.size();
}

usage current() noexcept
{
    std::lock_guard lock(mu);
    return {pages.size() * page_size + own_bytes, held_bytes};
}

} // namespace bjd::io::huge_pages
