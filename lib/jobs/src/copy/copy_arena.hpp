// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The memory of a copy that keeps at most so many bytes in flight (a mirror's window,
/// docs/copy-window.md): one buffer, from which each request takes the piece it needs.
#include "bjd/io/buffer.hpp"
#include "bjd/io/registered.hpp"

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

namespace bjd::io {
class engine;
}

namespace bjd::jobs::detail {

/// One buffer of `capacity` bytes, carved into pieces for the requests in flight. A copy's
/// memory is then what it has in flight and no more, whatever the size of its requests: 16
/// requests of 4 KiB take 16 KiB of it, not sixteen buffers of the largest request size.
/// QEMU's mirror carves its buf-size buffer into granularity chunks the same way.
///
/// Pieces come from below the arena's limit only (the window in force, `set_limit`), lowest
/// address first, so that the memory the kernel maps in stays within the largest window
/// used. That memory is registered with the engine as the limit grows, one range per growth,
/// and a piece never straddles two of them, so every piece's requests use io_uring's fixed
/// buffers. A piece is given back when the last `shared_ptr` to it goes, which may be after
/// the arena's owner is gone (a request that a force-cancel stopped waiting for). Not
/// thread-safe: the loop that owns the engine takes and frees pieces.
class copy_arena : public std::enable_shared_from_this<copy_arena> {
public:
    /// Room for `capacity` bytes, the first `limit` of them usable now. Requires
    /// `limit <= capacity`. Only what pieces touch, and what is registered, is mapped in.
    static std::shared_ptr<copy_arena> make(io::engine& e, std::size_t capacity, std::size_t limit);

    /// `len` bytes (rounded up to io::direct_alignment inside the arena), contiguous, below
    /// the limit; null when no free run is long enough now.
    std::shared_ptr<std::byte> take(std::size_t len);

    /// Pieces come from the first `bytes` from now on (clamped to the capacity). Pieces above
    /// a lowered limit stay valid until they are freed.
    void set_limit(std::size_t bytes);

    std::size_t limit() const noexcept { return limit_; }
    std::size_t capacity() const noexcept { return mem_.capacity(); }
    /// Bytes held by pieces now.
    std::size_t held() const noexcept { return held_; }
    /// How far into the arena pieces have ever reached: what the copy has touched of it.
    std::size_t high_water() const noexcept { return high_water_; }

    copy_arena(io::engine& e, std::size_t capacity, std::size_t limit);   // use make()

private:
    struct range {
        std::size_t begin, end;
    };
    void give_back(std::size_t begin) noexcept;
    /// Registers what lies between the last registered range and limit_ with the engine: the
    /// memory a grown window may use.
    void register_up_to_limit();

    io::engine& engine_;
    io::aligned_buffer mem_;
    /// Registrations of consecutive ranges from the arena's start; declared after mem_, so
    /// they end before its memory is freed.
    std::vector<io::registered_range> regs_;
    std::vector<std::size_t> reg_ends_;   ///< where each registered range ends: pieces stop at them
    std::vector<range> taken_;            ///< pieces held, by address
    std::size_t limit_ = 0;
    std::size_t held_ = 0;
    std::size_t high_water_ = 0;
};

} // namespace bjd::jobs::detail
