// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Aligned, owned byte buffers for O_DIRECT I/O.
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <span>

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
        : size_(size)
    {
        std::size_t rounded = (size + direct_alignment - 1) / direct_alignment * direct_alignment;
        void* p = std::aligned_alloc(direct_alignment, rounded ? rounded : direct_alignment);
        if (!p)
            throw std::bad_alloc();
        data_.reset(static_cast<std::byte*>(p));
    }

    std::byte* data() const noexcept { return data_.get(); }
    std::size_t size() const noexcept { return size_; }
    std::span<std::byte> span() const noexcept { return {data_.get(), size_}; }
    explicit operator bool() const noexcept { return bool(data_); }

private:
    std::unique_ptr<std::byte, aligned_free> data_;
    std::size_t size_ = 0;
};

} // namespace bjd::io
