// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// A dirty bitmap: which chunks of a node were written. One implementation serves the mirror
/// (what it still has to copy, the one source of truth) and users' named bitmaps
/// (block-dirty-bitmap-add). Byte ranges are rounded out to whole chunks of `granularity`
/// bytes; ranges reaching past `size` are cut there. Main loop only.
#include <cstdint>
#include <optional>
#include <vector>

namespace bjd::block {

class dirty_bitmap {
public:
    /// `size` bytes tracked in chunks of `granularity` (a power of two).
    dirty_bitmap(std::uint64_t size, std::uint64_t granularity);

    std::uint64_t granularity() const noexcept { return gran_; }
    std::uint64_t size() const noexcept { return size_; }
    std::uint64_t chunks() const noexcept { return nchunks_; }
    /// Bytes covered by dirty chunks (the last chunk counts only up to `size`).
    std::uint64_t dirty_bytes() const noexcept { return dirty_bytes_; }
    /// Dirty chunks times the granularity, a partial last chunk counting whole: the `count`
    /// QEMU reports for a bitmap (hbitmap_count).
    std::uint64_t count() const noexcept { return dirty_chunks_ * gran_; }

    /// Marks every chunk that overlaps [offset, offset+length).
    void set(std::uint64_t offset, std::uint64_t length);
    /// Clears every chunk that overlaps [offset, offset+length).
    void reset(std::uint64_t offset, std::uint64_t length);
    /// Clears only the chunks fully inside [offset, offset+length) (the tail chunk counts as
    /// full when the range reaches `size`).
    void reset_covered(std::uint64_t offset, std::uint64_t length);
    /// Clears everything.
    void clear();
    bool test(std::uint64_t chunk) const noexcept { return (bits_[chunk / 64] >> (chunk % 64)) & 1u; }
    /// First dirty chunk at or after `from`, wrapping around; none when clean.
    std::optional<std::uint64_t> next_dirty(std::uint64_t from) const noexcept;

    /// A run of dirty bytes: [offset, offset+length).
    struct area {
        std::uint64_t offset = 0;
        std::uint64_t length = 0;
        friend bool operator==(const area&, const area&) = default;
    };
    /// The first dirty run of bytes that overlaps [offset, end), cut to that range (and to
    /// `size`); none when the range is clean. Iterate by asking again from the run's end.
    std::optional<area> next_dirty_area(std::uint64_t offset, std::uint64_t end) const noexcept;

    /// Marks every byte `src` marks. The sizes must be equal; the granularities may differ
    /// (a finer source marks the coarser chunks its dirty bytes touch).
    void merge(const dirty_bitmap& src);

    /// Follows the node to `size` bytes: chunks past it go, new ones start clean.
    void resize(std::uint64_t size);

    std::uint64_t chunk_bytes(std::uint64_t chunk) const noexcept;

private:
    void set_chunks(std::uint64_t first, std::uint64_t last, bool v);
    /// First chunk in [lo, hi) whose bit equals `v`, or `hi`.
    std::uint64_t find(std::uint64_t lo, std::uint64_t hi, bool v) const noexcept;

    std::uint64_t size_;
    std::uint64_t gran_;
    std::uint64_t nchunks_;
    std::uint64_t dirty_bytes_ = 0;
    std::uint64_t dirty_chunks_ = 0;
    std::vector<std::uint64_t> bits_;
};

} // namespace bjd::block
