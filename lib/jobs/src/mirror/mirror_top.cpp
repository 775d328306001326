// SPDX-License-Identifier: MIT
// mirror_top: the filter above a mirror's source.
#include "mirror/mirror_job.hpp"

#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

namespace bjd::jobs::detail {

// ---- mirror_top ------------------------------------------------------------------------------

mirror_top::mirror_top(block::node_options o, std::shared_ptr<block::node> source, bool is_implicit,
                       asio::any_io_executor ex)
    : filter_node(std::move(o), std::move(source), "backing", is_implicit), changed_(ex)
{
}

block::node* mirror_top::admit() noexcept
{
    if (held_)
        return nullptr;
    ++inflight_;
    return redirect_ ? redirect_.get() : below();
}

asio::awaitable<block::node*> mirror_top::enter_request()
{
    while (held_)
        co_await changed_.wait();
    co_return admit();
}

void mirror_top::leave_timed(std::chrono::steady_clock::time_point entered)
{
    if (job_)
        job_->guest_io(std::chrono::steady_clock::now() - entered);
    leave_request();
}

void mirror_top::leave_request()
{
    --inflight_;
    if (inflight_ == 0)
        changed_.notify_all();
}

asio::awaitable<void> mirror_top::drain()
{
    held_ = true;
    while (inflight_ > 0)
        co_await changed_.wait();
}

void mirror_top::release(std::shared_ptr<block::node> to)
{
    if (to)
        redirect_ = std::move(to);
    held_ = false;
    changed_.notify_all();
}

asio::awaitable<result<void>> mirror_top::do_read(std::uint64_t offset, std::span<std::byte> buf)
{
    const auto entered = std::chrono::steady_clock::now();
    block::node* n = admit();
    if (!n)
        n = co_await enter_request();
    auto r = co_await n->read(offset, buf);
    leave_timed(entered);
    co_return r;
}

asio::awaitable<result<void>> mirror_top::do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua)
{
    const auto entered = std::chrono::steady_clock::now();
    block::node* n = admit();
    if (!n)
        n = co_await enter_request();
    result<void> r;
    if (job_ && !redirect_ && job_->active())
        r = co_await job_->active_write(*n, op_kind::copy, offset, buf, buf.size(), fua, false);
    else if (job_ && !redirect_)
        r = co_await job_->background_write(*n, offset, buf, fua);
    else
        r = co_await n->write(offset, buf, fua);
    leave_timed(entered);
    co_return r;
}

asio::awaitable<result<void>> mirror_top::do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                                          block::zero_flags f)
{
    const auto entered = std::chrono::steady_clock::now();
    block::node* n = admit();
    if (!n)
        n = co_await enter_request();
    result<void> r;
    if (job_ && !redirect_ && job_->active() && !f.no_fallback) {
        r = co_await job_->active_write(*n, op_kind::zero, offset, {}, length, false, f.may_unmap);
    } else {
        if (job_ && !redirect_)
            co_await job_->settle(offset, length);
        r = co_await n->write_zeroes(offset, length, f);
    }
    leave_timed(entered);
    co_return r;
}

asio::awaitable<result<void>> mirror_top::do_discard(std::uint64_t offset, std::uint64_t length)
{
    const auto entered = std::chrono::steady_clock::now();
    block::node* n = admit();
    if (!n)
        n = co_await enter_request();
    result<void> r;
    if (job_ && !redirect_ && job_->active()) {
        r = co_await job_->active_write(*n, op_kind::discard, offset, {}, length, false, true);
    } else {
        if (job_ && !redirect_)
            co_await job_->settle(offset, length);
        r = co_await n->discard(offset, length);
    }
    leave_timed(entered);
    co_return r;
}

asio::awaitable<result<void>> mirror_top::do_flush()
{
    block::node* n = admit();
    if (!n)
        n = co_await enter_request();
    auto r = co_await n->flush();
    leave_request();
    co_return r;
}

asio::awaitable<result<block::extent>> mirror_top::do_block_status(std::uint64_t offset, std::uint64_t length)
{
    block::node* n = admit();
    if (!n)
        n = co_await enter_request();
    auto r = co_await n->block_status(offset, length);
    leave_request();
    co_return r;
}

} // namespace bjd::jobs::detail
