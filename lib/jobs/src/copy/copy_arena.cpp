// SPDX-License-Identifier: MIT
#include "copy/copy_arena.hpp"

#include "bjd/io/engine.hpp"

#include <algorithm>
#include <cassert>

// The pieces have no redzones between them; under AddressSanitizer the free parts of the
// arena are poisoned instead, so that a request that overruns its piece is still caught.
// (The macros do nothing in other builds.)
#include <sanitizer/asan_interface.h>

namespace bjd::jobs::detail {

std::shared_ptr<copy_arena> copy_arena::make(io::engine& e, std::size_t capacity, std::size_t limit)
{
    return std::make_shared<copy_arena>(e, capacity, limit);
}

copy_arena::copy_arena(io::engine& e, std::size_t capacity, std::size_t limit)
    : engine_(e), mem_(capacity)
{
    assert(limit <= capacity);
    ASAN_POISON_MEMORY_REGION(mem_.data(), mem_.capacity());
    set_limit(limit);
}

void copy_arena::set_limit(std::size_t bytes)
{
    limit_ = std::min(io::round_up_to_alignment(bytes), capacity());
    register_up_to_limit();
}

void copy_arena::register_up_to_limit()
{
    const std::size_t registered = reg_ends_.empty() ? 0 : reg_ends_.back();
    if (limit_ <= registered)
        return;
    regs_.push_back(engine_.register_range({mem_.data() + registered, limit_ - registered}));
    reg_ends_.push_back(limit_);
}

std::shared_ptr<std::byte> copy_arena::take(std::size_t len)
{
    len = io::round_up_to_alignment(std::max<std::size_t>(len, 1));
    // First fit over the gaps between the pieces held, lowest address first, never across
    // the end of a registered range.
    std::size_t at = 0;
    auto next_taken = taken_.begin();
    auto reg_end = reg_ends_.begin();
    for (;;) {
        const std::size_t gap_end = next_taken == taken_.end() ? limit_ : std::min(next_taken->begin, limit_);
        while (reg_end != reg_ends_.end() && *reg_end <= at)
            ++reg_end;
        const std::size_t stop = reg_end == reg_ends_.end() ? gap_end : std::min(gap_end, *reg_end);
        if (at + len <= stop)
            break;
        if (stop < gap_end) {
            at = stop;   // the next registered range, same gap
            continue;
        }
        if (next_taken == taken_.end() || next_taken->begin >= limit_)
            return nullptr;
        at = next_taken->end;
        ++next_taken;
    }
    taken_.insert(next_taken, range{at, at + len});
    held_ += len;
    high_water_ = std::max(high_water_, at + len);
    ASAN_UNPOISON_MEMORY_REGION(mem_.data() + at, len);
    // The piece keeps the arena alive; it goes back when the last reference does.
    return std::shared_ptr<std::byte>(mem_.data() + at,
                                      [self = shared_from_this(), at](std::byte*) { self->give_back(at); });
}

void copy_arena::give_back(std::size_t begin) noexcept
{
    auto it = std::lower_bound(taken_.begin(), taken_.end(), begin,
                               [](const range& r, std::size_t b) { return r.begin < b; });
    assert(it != taken_.end() && it->begin == begin);
    held_ -= it->end - it->begin;
    ASAN_POISON_MEMORY_REGION(mem_.data() + it->begin, it->end - it->begin);
    taken_.erase(it);
}

} // namespace bjd::jobs::detail
