// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Aligned, owned byte buffers for O_DIRECT I/O, and a pool that recycles the large ones.
#include "bjd/io/huge_pages.hpp"
#include "bjd/io/registered.hpp"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <span>
#include <vector>

namespace bjd::io {

/// Alignment that satisfies O_DIRECT on every device we support (logical blocks ≤ 4 KiB).
inline constexpr std::size_t direct_alignment = 4096;

/// `n` rounded up to a multiple of direct_alignment.
constexpr std::size_t round_up_to_alignment(std::size_t n) noexcept
{
    return (n + direct_alignment - 1) / direct_alignment * direct_alignment;
}

/// Whether aligned_buffer takes large buffers from huge_pages. Not under AddressSanitizer:
/// buffers carved from a shared page have no redzones between them, and ASan's redzones are
/// what catch a request that overruns its buffer (one did, when a mirror window shrank).
#if defined(__SANITIZE_ADDRESS__)   // GCC
inline constexpr bool buffers_on_huge_pages = false;
#elif defined(__has_feature)        // Clang
inline constexpr bool buffers_on_huge_pages = !__has_feature(address_sanitizer);
#else
inline constexpr bool buffers_on_huge_pages = true;
#endif

/// Frees a buffer's memory: from huge_pages when `huge` is its size there, else from the heap.
struct aligned_free {
    std::size_t huge = 0;
    void operator()(std::byte* p) const noexcept
    {
        if (huge)
            huge_pages::release(p, huge);
        else
            std::free(p);
    }
};

/// A heap buffer of `size` bytes aligned to `direct_alignment`. Move-only. It may carry the
/// registration of its memory with an I/O engine (`keep_registration`), which then ends just
/// before the memory is freed. From huge_pages::min_size up, the memory comes from huge pages
/// where the kernel has them, so that a request on the whole buffer reaches the device whole
/// (huge_pages.hpp).
class aligned_buffer {
public:
    aligned_buffer() = default;
    aligned_buffer(aligned_buffer&&) noexcept = default;
    aligned_buffer& operator=(aligned_buffer&& o) noexcept
    {
        if (this != &o) {
            reg_.reset();   // before the memory it covers goes
            data_ = std::move(o.data_);
            reg_ = std::move(o.reg_);
            size_ = o.size_;
            capacity_ = o.capacity_;
        }
        return *this;
    }
    explicit aligned_buffer(std::size_t size)
        : aligned_buffer(size, size)
    {
    }
    /// `size` bytes in use, room for `capacity` (≥ size; rounded up to the alignment).
    aligned_buffer(std::size_t size, std::size_t capacity)
        : size_(size)
    {
        if (capacity < size)
            capacity = size;
        capacity_ = round_up_to_alignment(capacity);
        if (capacity_ == 0)
            capacity_ = direct_alignment;
        if (buffers_on_huge_pages && capacity_ >= huge_pages::min_size) {
            if (void* h = huge_pages::allocate(capacity_)) {
                data_ = {static_cast<std::byte*>(h), aligned_free{capacity_}};
                return;
            }
        }
        void* p = std::aligned_alloc(direct_alignment, capacity_);
        if (!p)
            throw std::bad_alloc();
        data_.reset(static_cast<std::byte*>(p));
    }

    std::byte* data() const noexcept { return data_.get(); }
    std::size_t size() const noexcept { return size_; }
    /// Bytes allocated (0 for an empty buffer).
    std::size_t capacity() const noexcept { return data_ ? capacity_ : 0; }
    /// Changes the size within the capacity (the contents are kept).
    void resize(std::size_t n) noexcept { size_ = n <= capacity() ? n : capacity(); }
    std::span<std::byte> span() const noexcept { return {data_.get(), size_}; }
    explicit operator bool() const noexcept { return bool(data_); }

    /// The whole allocation, as registered.
    std::span<std::byte> allocation() const noexcept { return {data_.get(), capacity()}; }
    /// Keeps `r`, a registration of `allocation()`, for as long as the memory lives.
    void keep_registration(registered_range r) noexcept { reg_ = std::move(r); }
    bool registered() const noexcept { return bool(reg_); }

private:
    std::unique_ptr<std::byte, aligned_free> data_;
    registered_range reg_;   // declared after data_: released before data_ is freed
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
};

/// Recycles aligned buffers. glibc serves each large allocation with fresh pages (mmap, or a
/// heap it trims again on free), so a stream of 1 MiB requests spends most of its CPU on page
/// faults and on the kernel zeroing those pages; a buffer taken from here is already mapped.
/// Small ones are no cheaper from the heap: an aligned allocation bypasses glibc's per-thread
/// cache and splits and merges chunks of its main heap, a cost that showed in every 4 KiB
/// request of an NBD export. Capacities are powers of two from `direct_alignment` up, so a
/// size class serves every request up to it; at most `max_cached` bytes wait in the pool, the
/// rest is freed. Not thread-safe: one pool per loop.
///
/// With a registrar (`register_with`), each buffer of at least `min_registered` bytes that the
/// pool allocates is registered once with the loop's I/O engine and keeps that registration
/// through every reuse: its requests then skip pinning their pages (registered_range).
class buffer_pool {
public:
    static constexpr std::size_t min_pooled = direct_alignment;   ///< the smallest class
    static constexpr std::size_t max_pooled = 64u << 20;
    /// Smaller buffers gain little (pinning 16 pages is cheap) and would use up the engine's
    /// table of registrations.
    static constexpr std::size_t min_registered = 256u << 10;
    using registrar = std::function<registered_range(std::span<std::byte>)>;

    explicit buffer_pool(std::size_t max_cached = 16u << 20) : max_cached_(max_cached) {}
    buffer_pool(const buffer_pool&) = delete;
    buffer_pool& operator=(const buffer_pool&) = delete;

    /// Registers the large buffers allocated from now on with `r` (typically the loop's
    /// engine::register_range). Every buffer from this pool must then be freed on the
    /// engine's loop thread.
    void register_with(registrar r) { registrar_ = std::move(r); }

    /// A buffer of `size` bytes (contents unspecified).
    aligned_buffer get(std::size_t size)
    {
        if (size > max_pooled)
            return aligned_buffer(size);
        std::size_t cap = std::max(std::bit_ceil(size), min_pooled);
        auto& free = classes_[class_of(cap)];
        if (free.empty()) {
            aligned_buffer b(size, cap);
            if (registrar_ && cap >= min_registered)
                b.keep_registration(registrar_(b.allocation()));
            return b;
        }
        aligned_buffer b = std::move(free.back());
        free.pop_back();
        cached_ -= cap;
        b.resize(size);
        return b;
    }

    /// Gives a buffer back (any buffer; those the pool cannot reuse are freed).
    void put(aligned_buffer b)
    {
        std::size_t cap = b.capacity();
        if (cap < min_pooled || cap > max_pooled || !std::has_single_bit(cap) || cached_ + cap > max_cached_)
            return;
        cached_ += cap;
        classes_[class_of(cap)].push_back(std::move(b));
    }

    /// Bytes waiting in the pool.
    std::size_t cached_bytes() const noexcept { return cached_; }
    /// Frees everything waiting.
    void clear() noexcept
    {
        for (auto& c : classes_)
            c.clear();
        cached_ = 0;
    }

private:
    static constexpr std::size_t class_count = std::bit_width(max_pooled / min_pooled);
    static std::size_t class_of(std::size_t cap) noexcept { return std::bit_width(cap / min_pooled) - 1; }

    std::size_t max_cached_;
    registrar registrar_;
    std::size_t cached_ = 0;
    std::vector<aligned_buffer> classes_[class_count];
};

} // namespace bjd::io
