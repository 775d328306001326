// SPDX-License-Identifier: MIT
#include "copy/copy_driver.hpp"

#include "bjd/event_flag.hpp"

#include <boost/asio/co_spawn.hpp>

#include <algorithm>
#include <exception>
#include <vector>

namespace bjd::jobs::detail {

struct piece_pool::state {
    state(const asio::any_io_executor& e, unsigned d, piece_fn p, limit_fn l)
        : ex(e), depth(d), piece(std::move(p)), limit(std::move(l)), busy(d), done(e)
    {
    }
    unsigned allowed() const { return limit ? std::clamp(limit(), 1u, depth) : depth; }
    asio::any_io_executor ex;
    unsigned depth;
    piece_fn piece;
    limit_fn limit;
    std::vector<bool> busy;
    unsigned running = 0;
    std::optional<copy_step> failed;
    event_flag done;
};

piece_pool::piece_pool(const asio::any_io_executor& ex, unsigned depth, piece_fn piece, limit_fn limit)
    : st_(std::make_shared<state>(ex, std::max(1u, depth), std::move(piece), std::move(limit)))
{
}

asio::awaitable<bool> piece_pool::ready()
{
    while (st_->running >= st_->allowed() && !st_->failed)
        co_await st_->done.wait();
    co_return !st_->failed;
}

void piece_pool::spawn(std::uint64_t offset, std::uint64_t length)
{
    auto st = st_;
    const auto slot = static_cast<unsigned>(std::find(st->busy.begin(), st->busy.end(), false) - st->busy.begin());
    st->busy[slot] = true;
    ++st->running;
    asio::co_spawn(st->ex, st->piece(slot, offset, length), [st, slot](std::exception_ptr e, copy_step s) {
        if (e) {
            s.r = std::make_error_code(std::errc::io_error);   // a bug in a piece fails the step
            s.in_source = true;
        }
        if (!s.r && !st->failed)
            st->failed = std::move(s);
        st->busy[slot] = false;
        --st->running;
        st->done.notify_all();
    });
}

asio::awaitable<std::optional<copy_step>> piece_pool::join()
{
    while (st_->running > 0)
        co_await st_->done.wait();
    co_return st_->failed;
}

void copy_driver::set_speed(job& j, std::int64_t speed)
{
    limiter_.set_speed(speed);
    if (j.sleeping_timed())
        j.enter();   // recompute the delay with the new limit now
}

asio::awaitable<qapi::result<void>> copy_driver::copy_loop(
    job& j, std::uint64_t len, const step_policy& policy,
    std::function<asio::awaitable<step>(std::uint64_t, std::uint64_t)> do_step)
{
    if (policy.counts_progress)
        j.progress_set_remaining(len);
    std::optional<std::error_code> failure;
    std::chrono::nanoseconds delay{0};
    for (std::uint64_t offset = 0, n = 0; offset < len; offset += n) {
        co_await j.sleep(delay);
        if (j.is_cancelled())
            break;
        const std::uint64_t most = j.speed() > 0 ? policy.throttled_step : policy.step;
        step s = co_await do_step(offset, std::min(most, len - offset));
        n = s.length;
        if (!s.r) {
            const auto on_error = s.in_source ? policy.on_source_error : policy.on_target_error;
            auto action = j.error_action(on_error, s.in_source, s.r.error().value());
            if (action == qapi::block_error_action::stop) {
                n = 0;   // the same range again once resumed
                continue;
            }
            if (!failure && (action == qapi::block_error_action::report || policy.ignored_fails_job))
                failure = s.r.error();
            if (action == qapi::block_error_action::report)
                break;
        }
        if (policy.counts_progress)
            j.progress_done(n);
        delay = std::chrono::nanoseconds(0);
        if (s.copied) {
            limiter_.charge(n);
            delay = limiter_.delay();
        }
    }
    if (failure) {
        j.set_error_errno(failure->value());
        co_return qapi::generic(strerror_text(*failure));
    }
    co_return qapi::result<void>{};
}

asio::awaitable<copy_step> copy_driver::in_pieces(std::uint64_t offset, std::uint64_t n, std::uint64_t piece_size,
                                                  unsigned depth, piece_pool::piece_fn piece)
{
    piece_pool pool(ex_, depth, std::move(piece), yield_to_guests(piece_size, depth));
    for (std::uint64_t pos = offset, end = offset + n; pos < end;) {
        if (!co_await pool.ready())
            break;
        const std::uint64_t len = std::min(piece_size, end - pos);
        pool.spawn(pos, len);
        pos += len;
    }
    step out;
    out.length = n;
    out.copied = true;
    if (auto failed = co_await pool.join()) {
        out.r = failed->r;
        out.in_source = failed->in_source;
    }
    co_return out;
}

} // namespace bjd::jobs::detail
