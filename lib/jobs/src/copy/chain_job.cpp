// SPDX-License-Identifier: MIT
#include "copy/chain_job.hpp"

#include "bjd/block/create.hpp"
#include "bjd/block/driver.hpp"
#include "bjd/event_flag.hpp"

#include <boost/asio/co_spawn.hpp>

#include <exception>

namespace bjd::jobs::detail {

chain_job::chain_job(block::graph& g, asio::any_io_executor ex, std::string_view type)
    : graph_(g), ex_(std::move(ex)), type_(type)
{
}

void chain_job::clean(job& j)
{
    leave_graph();
    if (reopened_) {
        // Back to read-only, as it was before the job (QEMU's stream_clean, commit_clean).
        restore_read_only(ex_, std::move(reopened_), type_ + " '" + j.id() + "'");
        reopened_.reset();
    }
}

void chain_job::set_speed(job& j, std::int64_t speed)
{
    limiter_.set_speed(speed);
    if (j.sleeping_timed())
        j.enter();   // recompute the delay with the new limit now
}

qapi::result<job_nodes*> chain_job::enter_graph(job& j, std::shared_ptr<block::node> filter, block::node& below)
{
    if (auto r = insert_filter(graph_, filter, below); !r)
        return r.error();
    filter_ = std::move(filter);
    limiter_.set_speed(j.speed());
    return &nodes_.emplace(type_ + " job '" + j.id() + "'", type_);
}

void chain_job::leave_graph()
{
    nodes_.reset();
    if (filter_)
        remove_filter(graph_, ex_, std::exchange(filter_, nullptr), type_);
}

asio::awaitable<qapi::result<void>> chain_job::copy_loop(
    job& j, std::uint64_t len, std::uint64_t chunk, qapi::blockdev_on_error on_error,
    std::function<asio::awaitable<step>(std::uint64_t, std::uint64_t)> do_step)
{
    j.progress_set_remaining(len);
    std::optional<std::error_code> failure;
    std::chrono::nanoseconds delay{0};
    for (std::uint64_t offset = 0, n = 0; offset < len; offset += n) {
        co_await j.sleep(delay);
        if (j.is_cancelled())
            break;
        // Unthrottled, a step spans several pieces copied at once; throttled, it stays one
        // chunk so that `speed` is followed closely (QEMU copies one chunk at a time).
        const std::uint64_t most = j.speed() > 0 ? chunk : std::max(chunk, piece_size * depth);
        step s = co_await do_step(offset, std::min(most, len - offset));
        n = s.length;
        if (!s.r) {
            auto action = j.error_action(on_error, s.in_source, s.r.error().value());
            if (action == qapi::block_error_action::stop) {
                n = 0;   // the same range again once resumed
                continue;
            }
            if (!failure)
                failure = s.r.error();
            if (action == qapi::block_error_action::report)
                break;
        }
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

asio::awaitable<chain_job::step> chain_job::in_pieces(
    std::uint64_t offset, std::uint64_t n,
    std::function<asio::awaitable<step>(unsigned, std::uint64_t, std::uint64_t)> piece)
{
    struct state {
        explicit state(const asio::any_io_executor& ex) : done(ex) {}
        unsigned running = 0;
        std::vector<bool> busy = std::vector<bool>(depth);
        std::optional<step> failed;
        event_flag done;
    };
    auto st = std::make_shared<state>(ex_);
    for (std::uint64_t pos = offset, end = offset + n; pos < end && !st->failed;) {
        while (st->running >= depth)
            co_await st->done.wait();
        if (st->failed)
            break;
        const auto slot = static_cast<unsigned>(std::find(st->busy.begin(), st->busy.end(), false) - st->busy.begin());
        const std::uint64_t len = std::min(piece_size, end - pos);
        st->busy[slot] = true;
        ++st->running;
        asio::co_spawn(ex_, piece(slot, pos, len), [st, slot](std::exception_ptr e, step s) {
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
        pos += len;
    }
    while (st->running > 0)
        co_await st->done.wait();
    step out;
    out.length = n;
    out.copied = true;
    if (st->failed) {
        out.r = st->failed->r;
        out.in_source = st->failed->in_source;
    }
    co_return out;
}

asio::awaitable<qapi::result<void>> chain_job::write_chain(job& j, block::node& data, block::node* image,
                                                           const block::node* backing,
                                                           const std::optional<std::string>& backing_file)
{
    if (auto f = co_await data.flush(); !f) {
        j.set_error_errno(f.error().value());
        co_return qapi::generic(strerror_text(f.error()));
    }
    if (!image || !block::qcow2_info(*image))
        co_return qapi::result<void>{};
    std::string file, fmt;
    if (backing) {
        file = backing_file ? *backing_file : backing->filename();
        fmt = std::string(backing->driver());
    }
    if (auto h = co_await block::qcow2_change_backing_file(*image, file, fmt); !h) {
        j.set_error_errno(h.error().value());
        co_return qapi::generic(strerror_text(h.error()));
    }
    co_return qapi::result<void>{};
}

} // namespace bjd::jobs::detail
