// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// A ring buffer character device's storage (QEMU's ringbuf/memory chardev, chardev/char-ringbuf.c).
///
/// A circular buffer of `capacity()` bytes (a power of two) with monotonically increasing
/// write and read counters. Writing never fails and never blocks: when unread data would
/// exceed the capacity, the oldest bytes are overwritten and the read position jumps forward,
/// so the buffer always keeps the most recent `capacity()` bytes. Reads consume.
/// Not thread-safe: used on the main loop only.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::chardev {

class ringbuf {
public:
    /// `capacity` must be a power of two > 0 (checked by the registry; asserted here).
    explicit ringbuf(std::size_t capacity);

    std::size_t capacity() const noexcept { return buf_.size(); }
    /// Unread bytes, ≤ capacity().
    std::size_t available() const noexcept { return static_cast<std::size_t>(prod_ - cons_); }

    void write(std::span<const std::byte> data);
    void write(std::string_view data);
    /// Reads and consumes min(max, available()) bytes.
    std::string read(std::size_t max);

private:
    std::vector<char> buf_;
    std::uint64_t prod_ = 0;
    std::uint64_t cons_ = 0;
};

/// Whether `n` is a power of two greater than zero.
constexpr bool is_power_of_two(std::int64_t n) noexcept { return n > 0 && (n & (n - 1)) == 0; }

} // namespace bjd::chardev
