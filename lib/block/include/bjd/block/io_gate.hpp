// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// QEMU's drained sections, for the requests that come from outside the graph (exports, as
/// QEMU's BlockBackends): while a section is open, new requests wait at the gate, and opening
/// one waits until the requests already past the gate have finished. A `transaction` runs
/// inside one, so every action sees the same point in time: no guest write is half-way
/// through the graph while backup filters and snapshot overlays go in. Main loop only.
#include "bjd/event_flag.hpp"

#include <boost/asio/awaitable.hpp>

#include <optional>

namespace bjd::block {

class io_gate {
public:
    /// A request past the gate; it counts as in flight until destroyed.
    class pass {
    public:
        pass() = default;
        explicit pass(io_gate* g) : g_(g) {}
        pass(pass&& o) noexcept : g_(o.g_) { o.g_ = nullptr; }
        pass& operator=(pass&&) = delete;
        ~pass()
        {
            if (g_)
                g_->leave();
        }

    private:
        io_gate* g_ = nullptr;
    };

    /// An open drained section; the gate opens again when the last one is destroyed.
    class section {
    public:
        section() = default;
        explicit section(io_gate* g) : g_(g) {}
        section(section&& o) noexcept : g_(o.g_) { o.g_ = nullptr; }
        section& operator=(section&&) = delete;
        ~section()
        {
            if (g_)
                g_->reopen();
        }

    private:
        io_gate* g_ = nullptr;
    };

    /// Counts the caller in at once when no section is open (the common case, without a
    /// coroutine); none otherwise: then `enter`.
    std::optional<pass> try_enter()
    {
        if (closed_ > 0)
            return std::nullopt;
        ++in_flight_;
        return std::optional<pass>(std::in_place, this);
    }
    /// Waits while a section is open, then counts the caller in.
    boost::asio::awaitable<pass> enter();
    /// Closes the gate and waits until no request is past it.
    boost::asio::awaitable<section> drain();

    unsigned in_flight() const noexcept { return in_flight_; }
    bool closed() const noexcept { return closed_ > 0; }

private:
    void leave();
    void reopen();
    boost::asio::awaitable<void> wait_change();

    unsigned in_flight_ = 0;
    unsigned closed_ = 0;
    std::optional<event_flag> changed_;
};

} // namespace bjd::block
