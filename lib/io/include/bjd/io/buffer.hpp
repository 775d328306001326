// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Aligned, owned byte buffers for O_DIRECT I/O, and a pool that recycles the large ones.
#include <bit>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <span>
#include <vector>

namespace bjd::io {

/// Alignment that satisfies O_DIRECT on every device we support (logical blocks ≤ 4 KiB).
inline constexpr std::size_t direct_alignment = 4096;

struct aligned_free {
    void operator()(std::byte* p) const noexcept { std::free(p); }
};

/// A heap buffer of `size` bytes aligned to `direct_alignment`. Move-only.
class aligned_buffer {
public:
    aligned_buffer() = default;
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
        capacity_ = (capacity + direct_alignment - 1) / direct_alignment * direct_alignment;
        if (capacity_ == 0)
            capacity_ = direct_alignment;
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

private:
    std::unique_ptr<std::byte, aligned_free> data_;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
};

/// Recycles large aligned buffers. glibc serves each large allocation with fresh pages
/// (mmap, or a heap it trims again on free), so a stream of 1 MiB requests spends most of its
/// CPU on page faults and on the kernel zeroing those pages; a buffer taken from here is
/// already mapped. Buffers below `min_pooled` are plain allocations. Capacities are powers
/// of two, so a size class serves every request up to it; at most `max_cached` bytes wait
/// in the pool, the rest is freed. Not thread-safe: one pool per loop.
class buffer_pool {
public:
    static constexpr std::size_t min_pooled = 64u << 10;
    static constexpr std::size_t max_pooled = 64u << 20;

    explicit buffer_pool(std::size_t max_cached = 16u << 20) : max_cached_(max_cached) {}
    buffer_pool(const buffer_pool&) = delete;
    buffer_pool& operator=(const buffer_pool&) = delete;

    /// A buffer of `size` bytes (contents unspecified).
    aligned_buffer get(std::size_t size)
    {
        if (size < min_pooled || size > max_pooled)
            return aligned_buffer(size);
        std::size_t cap = std::bit_ceil(size);
        auto& free = classes_[class_of(cap)];
        if (free.empty())
            return aligned_buffer(size, cap);
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
    std::size_t cached_ = 0;
    std::vector<aligned_buffer> classes_[class_count];
};

} // namespace bjd::io
