// SPDX-License-Identifier: MIT
#include "bjd/block/dirty_bitmap.hpp"

#include <algorithm>
#include <bit>
#include <cassert>

namespace bjd::block {

dirty_bitmap::dirty_bitmap(std::uint64_t size, std::uint64_t granularity)
    : size_(size), gran_(granularity), nchunks_((size + granularity - 1) / granularity), bits_((nchunks_ + 63) / 64)
{
    assert(std::has_single_bit(granularity));
}

std::uint64_t dirty_bitmap::chunk_bytes(std::uint64_t chunk) const noexcept
{
    std::uint64_t start = chunk * gran_;
    return std::min(gran_, size_ - start);
}

void dirty_bitmap::set_chunks(std::uint64_t first, std::uint64_t last, bool v)
{
    for (std::uint64_t c = first; c <= last && c < nchunks_; ++c) {
        std::uint64_t& w = bits_[c / 64];
        std::uint64_t m = std::uint64_t(1) << (c % 64);
        if (bool(w & m) == v)
            continue;
        if (v) {
            w |= m;
            dirty_bytes_ += chunk_bytes(c);
            ++dirty_chunks_;
        } else {
            w &= ~m;
            dirty_bytes_ -= chunk_bytes(c);
            --dirty_chunks_;
        }
    }
}

void dirty_bitmap::set(std::uint64_t offset, std::uint64_t length)
{
    if (length == 0 || offset >= size_)
        return;
    set_chunks(offset / gran_, (std::min(offset + length, size_) - 1) / gran_, true);
}

void dirty_bitmap::reset(std::uint64_t offset, std::uint64_t length)
{
    if (length == 0 || offset >= size_)
        return;
    set_chunks(offset / gran_, (std::min(offset + length, size_) - 1) / gran_, false);
}

void dirty_bitmap::reset_covered(std::uint64_t offset, std::uint64_t length)
{
    std::uint64_t end = std::min(offset + length, size_);
    std::uint64_t first = (offset + gran_ - 1) / gran_;
    std::uint64_t last_excl = end == size_ ? nchunks_ : end / gran_;
    if (first < last_excl)
        set_chunks(first, last_excl - 1, false);
}

void dirty_bitmap::clear()
{
    std::fill(bits_.begin(), bits_.end(), 0);
    dirty_bytes_ = 0;
    dirty_chunks_ = 0;
}

std::uint64_t dirty_bitmap::find(std::uint64_t lo, std::uint64_t hi, bool v) const noexcept
{
    std::uint64_t c = lo;
    while (c < hi) {
        std::uint64_t w = bits_[c / 64];
        if (!v)
            w = ~w;
        w >>= c % 64;
        if (w) {
            c += std::countr_zero(w);
            return std::min(c, hi);
        }
        c = (c / 64 + 1) * 64;
    }
    return hi;
}

std::optional<std::uint64_t> dirty_bitmap::next_dirty(std::uint64_t from) const noexcept
{
    if (dirty_chunks_ == 0 || nchunks_ == 0)
        return std::nullopt;
    if (from >= nchunks_)
        from = 0;
    if (auto c = find(from, nchunks_, true); c < nchunks_)
        return c;
    if (auto c = find(0, from, true); c < from)
        return c;
    return std::nullopt;
}

std::optional<dirty_bitmap::area> dirty_bitmap::next_dirty_area(std::uint64_t offset, std::uint64_t end) const noexcept
{
    end = std::min(end, size_);
    if (offset >= end || dirty_chunks_ == 0)
        return std::nullopt;
    const std::uint64_t last = (end - 1) / gran_ + 1;   // chunks overlapping [offset, end)
    const std::uint64_t first = find(offset / gran_, last, true);
    if (first == last)
        return std::nullopt;
    const std::uint64_t stop = find(first, last, false);
    const std::uint64_t start = std::max(offset, first * gran_);
    return area{start, std::min(end, stop * gran_) - start};
}

void dirty_bitmap::merge(const dirty_bitmap& src)
{
    assert(src.size_ == size_);
    std::uint64_t pos = 0;
    while (auto a = src.next_dirty_area(pos, size_)) {
        set(a->offset, a->length);
        pos = a->offset + a->length;
    }
}

void dirty_bitmap::resize(std::uint64_t size)
{
    const std::uint64_t n = (size + gran_ - 1) / gran_;
    if (n < nchunks_)
        set_chunks(n, nchunks_ - 1, false);
    size_ = size;
    nchunks_ = n;
    bits_.resize((n + 63) / 64);   // new words start clean; cleared bits past n are 0 already
    // Only the last chunk can be partial: every other dirty chunk counts whole.
    dirty_bytes_ = dirty_chunks_ * gran_;
    if (n > 0 && test(n - 1))
        dirty_bytes_ -= gran_ - chunk_bytes(n - 1);
}

} // namespace bjd::block
