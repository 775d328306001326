// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// A dirty bitmap with a fixed granularity: what mirror still has to copy (the one source of
/// truth; STYLE §6). Byte ranges are rounded out to whole chunks. Main loop only.
#include <cstdint>
#include <optional>
#include <vector>

namespace bjd::jobs::detail {

class dirty_bitmap {
public:
    /// `size` bytes tracked in chunks of `granularity` (a power of two).
    dirty_bitmap(std::uint64_t size, std::uint64_t granularity);

    std::uint64_t granularity() const noexcept { return gran_; }
    std::uint64_t size() const noexcept { return size_; }
    std::uint64_t chunks() const noexcept { return nchunks_; }
    /// Bytes covered by dirty chunks (the last chunk counts only up to `size`).
    std::uint64_t dirty_bytes() const noexcept { return dirty_bytes_; }

    /// Marks every chunk that overlaps [offset, offset+length).
    void set(std::uint64_t offset, std::uint64_t length);
    /// Clears every chunk that overlaps [offset, offset+length).
    void reset(std::uint64_t offset, std::uint64_t length);
    /// Clears only the chunks fully inside [offset, offset+length) (the tail chunk counts as
    /// full when the range reaches `size`).
    void reset_covered(std::uint64_t offset, std::uint64_t length);
    bool test(std::uint64_t chunk) const noexcept { return (bits_[chunk / 64] >> (chunk % 64)) & 1u; }
    /// First dirty chunk at or after `from`, wrapping around; none when clean.
    std::optional<std::uint64_t> next_dirty(std::uint64_t from) const noexcept;

    std::uint64_t chunk_bytes(std::uint64_t chunk) const noexcept;

private:
    void set_chunks(std::uint64_t first, std::uint64_t last, bool v);

    std::uint64_t size_;
    std::uint64_t gran_;
    std::uint64_t nchunks_;
    std::uint64_t dirty_bytes_ = 0;
    std::vector<std::uint64_t> bits_;
};

} // namespace bjd::jobs::detail
