// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Memory for large I/O buffers, carved out of transparent huge pages (docs/io-buffers.md).
///
/// The kernel hands a device one segment per physically contiguous run of a request's buffer.
/// A 1 MiB buffer on 4 KiB pages is 256 segments, more than many virtio disks take in one
/// request (`max_segments` 254 on the machine of bench/NOTES-full.md), so each 1 MiB read or
/// write reached the disk as two requests of 512 KiB. A buffer that lies inside one 2 MiB
/// huge page is one segment, and the request stays whole.
///
/// Sizes up to a huge page are rounded up to a power of two and share pages with buffers of
/// the same size (two of 1 MiB to a page), so a mirror's sixteen 1 MiB buffers take 16 MiB,
/// as before. A page goes back to the kernel when its last buffer is released. Larger sizes
/// get a mapping of their own, rounded up to whole huge pages. Where the kernel gives no huge
/// page (transparent huge pages off, or memory too fragmented at the moment), the memory is
/// ordinary pages and everything still works, only with more segments. Thread-safe.
#include <cstddef>

namespace bjd::io::huge_pages {

/// The size of a transparent huge page on x86-64 and arm64 with 4 KiB base pages.
inline constexpr std::size_t page_size = 2u << 20;

/// Smaller buffers are not worth a share of a huge page: 64 segments or fewer fit any device.
inline constexpr std::size_t min_size = 256u << 10;

/// Bytes taken for a buffer of `n` bytes (n ≥ min_size): a power of two up to a page, whole
/// pages above.
std::size_t footprint(std::size_t n) noexcept;

/// Memory for `n` bytes (n ≥ min_size), aligned to min_size, inside one huge page when n fits
/// one; nullptr when the kernel refuses the mapping.
void* allocate(std::size_t n) noexcept;

/// Returns what allocate(n) gave, with the same n.
void release(void* p, std::size_t n) noexcept;

/// Whether the kernel backs madvise(MADV_HUGEPAGE) regions with huge pages at all
/// (/sys/kernel/mm/transparent_hugepage/enabled is "always" or "madvise").
bool available() noexcept;

/// Huge pages mapped for shared buffers right now (for tests).
std::size_t shared_pages() noexcept;

/// The memory behind large I/O buffers right now, for the metrics: what is mapped (shared
/// pages and the mappings of larger buffers, whole huge pages), and how much of it live
/// buffers hold (their footprints). Mapped minus held is what freed buffers leave in pages
/// still shared with live ones.
struct usage {
    std::size_t mapped_bytes = 0;
    std::size_t held_bytes = 0;
};
usage current() noexcept;

} // namespace bjd::io::huge_pages
