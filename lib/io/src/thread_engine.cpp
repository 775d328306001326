// SPDX-License-Identifier: MIT
// The thread-pool backend (aio=threads): workers run pread/pwrite/fsync/fallocate and post the
// result back to the awaiting coroutine's executor. Retry and short-I/O rules are shared with
// io_uring in engine_base.
#include "engine_base.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

namespace bjd::io::detail {

namespace {

/// Runs one request on the calling (worker) thread: the result or a negative errno.
int run_syscall(const raw_request& r) noexcept
{
    long res = -1;
    switch (r.op) {
    case raw_request::opcode::read:
        res = ::pread(r.fd, r.addr, r.len, static_cast<off_t>(r.offset));
        break;
    case raw_request::opcode::write:
        res = ::pwrite(r.fd, r.addr, r.len, static_cast<off_t>(r.offset));
        break;
    case raw_request::opcode::fsync:
        res = ::fsync(r.fd);
        break;
    case raw_request::opcode::fdatasync:
        res = ::fdatasync(r.fd);
        break;
    case raw_request::opcode::fallocate:
        res = ::fallocate(r.fd, r.mode, static_cast<off_t>(r.offset), static_cast<off_t>(r.range));
        break;
    }
    return res < 0 ? -errno : static_cast<int>(res); // len ≤ max_chunk, so res fits
}

/// A worker's job: the request, the handler and a work guard on the handler's executor.
template <class Handler>
class pool_job {
public:
    using handler_executor = asio::associated_executor_t<Handler, asio::io_context::executor_type>;

    pool_job(Handler&& h, const asio::io_context::executor_type& io_ex, const raw_request& r)
        : req_(r)
        , handler_(std::move(h))
        , work_(asio::get_associated_executor(handler_, io_ex))
    {
    }

    void operator()()
    {
        int res = run_syscall(req_);
        // Leaving this thread: the handler runs on its own executor (the loop), exactly once.
        auto ex = work_.get_executor();
        asio::dispatch(ex, asio::append(std::move(handler_), res));
        work_.reset();
    }

private:
    raw_request req_;
    Handler handler_;
    asio::executor_work_guard<handler_executor> work_;
};

class thread_engine final : public engine_base {
public:
    thread_engine(asio::io_context& ctx, unsigned threads)
        : engine_base(ctx)
        , pool_(threads)
    {
    }

    ~thread_engine() override
    {
        // Finish what the workers have (their buffers are still the caller's); results for a
        // loop that no longer runs are dropped with that loop.
        pool_.join();
    }

    backend kind() const noexcept override { return backend::threads; }

protected:
    asio::awaitable<int> perform(raw_request r) override
    {
        return asio::async_initiate<const asio::use_awaitable_t<>&, void(int)>(
            [this](auto handler, const raw_request& req) {
                using handler_t = decltype(handler);
                // Ownership of the handler passes to a worker until it posts the result back.
                asio::post(pool_, pool_job<handler_t>(std::move(handler), ctx_.get_executor(), req));
            },
            asio::use_awaitable, r);
    }

private:
    asio::thread_pool pool_;
};

} // namespace

std::unique_ptr<engine> make_thread_engine(asio::io_context& ctx, const engine_options& opts)
{
    return std::make_unique<thread_engine>(ctx, std::max(opts.pool_threads, 1u));
}

} // namespace bjd::io::detail
