// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Memory registered with an I/O engine (io_uring's fixed buffers), see `registered_range`.
#include <memory>
#include <utility>

namespace bjd::io {

namespace detail {
/// The engine's side of buffer registrations (see `registered_range`).
class fixed_slots {
public:
    virtual ~fixed_slots() = default;
    /// Forgets the registration in `slot` (a no-op once the engine is gone).
    virtual void release(int slot) noexcept = 0;
};
} // namespace detail

/// A range of memory registered with an engine, which then reads and writes into it without
/// pinning its pages for every request (io_uring's fixed buffers, READ_FIXED and WRITE_FIXED:
/// for a 1 MiB O_DIRECT request that is most of the kernel's CPU time). Requests find the
/// registration by their buffer's address, so nothing changes for callers: any read or write
/// whose buffer lies within the range uses it. Move-only; the registration ends when this
/// object is destroyed or reset, which must happen on the engine's loop thread and before the
/// memory is freed or unmapped (the kernel holds the pages it pinned, not the mapping).
/// Empty when the engine does not register buffers or the kernel refused (RLIMIT_MEMLOCK):
/// requests then pin pages as usual.
class registered_range {
public:
    registered_range() = default;
    registered_range(std::shared_ptr<detail::fixed_slots> owner, int slot) noexcept
        : owner_(std::move(owner)), slot_(slot)
    {
    }
    registered_range(registered_range&& o) noexcept : owner_(std::move(o.owner_)), slot_(std::exchange(o.slot_, -1)) {}
    registered_range& operator=(registered_range&& o) noexcept
    {
        if (this != &o) {
            reset();
            owner_ = std::move(o.owner_);
            slot_ = std::exchange(o.slot_, -1);
        }
        return *this;
    }
    ~registered_range() { reset(); }

    void reset() noexcept
    {
        if (owner_ && slot_ >= 0)
            owner_->release(slot_);
        owner_.reset();
        slot_ = -1;
    }
    explicit operator bool() const noexcept { return slot_ >= 0; }

private:
    std::shared_ptr<detail::fixed_slots> owner_;
    int slot_ = -1;
};

} // namespace bjd::io
