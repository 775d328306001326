// SPDX-License-Identifier: MIT
// The thread-pool backend (aio=threads): workers run pread/pwrite/fsync/fallocate (and
// FICLONERANGE) and post the result back to the awaiting coroutine's executor. Retry and
// short-I/O rules are shared with io_uring in engine_base.
#include "engine_base.hpp"

#include <boost/asio/thread_pool.hpp>

#include <algorithm>
#include <optional>

namespace bjd::io::detail {

namespace {

class thread_engine final : public engine_base {
public:
    thread_engine(asio::io_context& ctx, unsigned threads)
        : engine_base(ctx)
        , threads_(threads)
    {
    }

    ~thread_engine() override
    {
        // Finish what the workers have (their buffers are still the caller's); results for a
        // loop that no longer runs are dropped with that loop.
        if (pool_)
            pool_->join();
    }

    backend kind() const noexcept override { return backend::threads; }

protected:
    asio::awaitable<int> perform(raw_request r) override { return perform_on(pool(), ctx_, r); }
    asio::awaitable<int> perform_blocking(raw_request r) override { return perform_on(pool(), ctx_, r); }

private:
    /// The workers start with the first request: the daemon keeps this engine for aio=threads
    /// nodes, and one that has none (io_uring serves the rest) then runs no idle threads.
    asio::thread_pool& pool()
    {
        if (!pool_)
            pool_.emplace(threads_);
        return *pool_;
    }

    unsigned threads_;
    std::optional<asio::thread_pool> pool_;
};

} // namespace

std::unique_ptr<engine> make_thread_engine(asio::io_context& ctx, const engine_options& opts)
{
    return std::make_unique<thread_engine>(ctx, std::max(opts.pool_threads, 1u));
}

} // namespace bjd::io::detail
