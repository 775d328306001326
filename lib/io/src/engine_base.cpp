// SPDX-License-Identifier: MIT
// Request semantics shared by every backend: retries, short I/O, the drain gate, counters,
// and the worker threads for what a backend cannot do itself.
#include "engine_base.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cerrno>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

namespace bjd::io::detail {

namespace {

/// EAGAIN/EINTR are transient, but a descriptor opened O_NONBLOCK on something that is not a
/// regular file could return EAGAIN forever; give up after this many resubmissions.
constexpr unsigned max_retries = 1000;

bool is_direct(int fd) noexcept
{
    int fl = ::fcntl(fd, F_GETFL);
    return fl >= 0 && (fl & O_DIRECT);
}

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
    case raw_request::opcode::clone_range: {
        file_clone_range arg{};
        arg.src_fd = r.fd;
        arg.src_offset = r.offset;
        arg.src_length = r.range;
        arg.dest_offset = r.offset_out;
        res = ::ioctl(r.fd_out, FICLONERANGE, &arg);
        break;
    }
    }
    return res < 0 ? -errno : static_cast<int>(res); // lengths ≤ max_chunk, so res fits
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

} // namespace

asio::awaitable<int> perform_on(asio::thread_pool& pool, asio::io_context& ctx, const raw_request& r)
{
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(int)>(
        [&pool, &ctx](auto handler, const raw_request& req) {
            using handler_t = decltype(handler);
            // Ownership of the handler passes to a worker until it posts the result back.
            asio::post(pool, pool_job<handler_t>(std::move(handler), ctx.get_executor(), req));
        },
        asio::use_awaitable, r);
}

asio::awaitable<int> engine_base::perform_blocking(raw_request r)
{
    if (!workers_)
        workers_ = std::make_unique<asio::thread_pool>(2);
    return perform_on(*workers_, ctx_, r);
}

/// Counts an accepted operation as in flight for its whole lifetime (including resubmissions)
/// and opens the drain gate when the last one finishes.
class engine_base::gate_guard {
public:
    explicit gate_guard(engine_base& e) noexcept
        : e_(e)
    {
        auto& s = e_.stats_;
        s.max_in_flight = std::max(s.max_in_flight, ++s.in_flight);
    }
    ~gate_guard()
    {
        if (--e_.stats_.in_flight == 0 && e_.draining_)
            e_.drained_.cancel();
    }
    gate_guard(const gate_guard&) = delete;
    gate_guard& operator=(const gate_guard&) = delete;

private:
    engine_base& e_;
};

engine_base::engine_base(asio::io_context& ctx)
    : ctx_(ctx)
    , drained_(ctx, asio::steady_timer::time_point::max())
{
}

asio::awaitable<int> engine_base::perform_retrying(raw_request r)
{
    // What the backend cannot do itself goes to a worker thread.
    const bool blocking = r.op == raw_request::opcode::clone_range;
    for (unsigned attempt = 0;; ++attempt) {
        int res = blocking ? co_await perform_blocking(r) : co_await perform(r);
        if ((res != -EAGAIN && res != -EINTR) || attempt == max_retries)
            co_return res;
        ++stats_.retries;
    }
}

asio::awaitable<result<std::size_t>> engine_base::read(int fd, std::span<std::byte> buf, std::uint64_t offset,
                                                       io_hint hint)
{
    if (draining_)
        co_return errno_error(ECANCELED);
    gate_guard gate(*this);
    ++stats_.reads;
    std::size_t done = 0;
    while (done < buf.size()) {
        raw_request r;
        r.op = raw_request::opcode::read;
        r.hint = hint;
        r.fd = fd;
        r.addr = buf.data() + done;
        r.len = static_cast<std::uint32_t>(std::min<std::size_t>(buf.size() - done, max_chunk));
        r.offset = offset + done;
        int res = co_await perform_retrying(r);
        if (res == -EINVAL && done > 0 && is_direct(fd)) {
            // The rest of a short O_DIRECT read starts at an unaligned offset, which the
            // kernel refuses; a short read there can only have stopped at end of file.
            break;
        }
        if (res < 0) {
            ++stats_.errors;
            co_return neg_errno_error(res);
        }
        if (res == 0)
            break; // end of file
        done += static_cast<std::size_t>(res);
        if (static_cast<std::uint32_t>(res) < r.len)
            ++stats_.short_resumes;
    }
    stats_.bytes_read += done;
    co_return done;
}

asio::awaitable<result<void>> engine_base::write(int fd, std::span<const std::byte> buf, std::uint64_t offset,
                                                 io_hint hint)
{
    if (draining_)
        co_return errno_error(ECANCELED);
    gate_guard gate(*this);
    ++stats_.writes;
    std::size_t done = 0;
    bool resumed = false;
    while (done < buf.size()) {
        raw_request r;
        r.op = raw_request::opcode::write;
        r.hint = hint;
        r.fd = fd;
        r.addr = const_cast<std::byte*>(buf.data() + done); // the kernel only reads it
        r.len = static_cast<std::uint32_t>(std::min<std::size_t>(buf.size() - done, max_chunk));
        r.offset = offset + done;
        int res = co_await perform_retrying(r);
        if (res == 0 || (res == -EINVAL && resumed && is_direct(fd)))
            res = -ENOSPC; // a short write that cannot make progress: the device is full
        if (res < 0) {
            ++stats_.errors;
            co_return neg_errno_error(res);
        }
        done += static_cast<std::size_t>(res);
        if (static_cast<std::uint32_t>(res) < r.len) {
            // Resume once more: if the device really is full, that write fails with ENOSPC
            // (or EFBIG, EDQUOT), which is more precise than guessing.
            ++stats_.short_resumes;
            resumed = true;
        }
    }
    stats_.bytes_written += done;
    co_return result<void>{};
}

asio::awaitable<result<void>> engine_base::fsync(int fd, bool datasync)
{
    if (draining_)
        co_return errno_error(ECANCELED);
    gate_guard gate(*this);
    ++stats_.syncs;
    raw_request r;
    r.op = datasync ? raw_request::opcode::fdatasync : raw_request::opcode::fsync;
    r.fd = fd;
    int res = co_await perform_retrying(r);
    if (res < 0) {
        ++stats_.errors;
        co_return neg_errno_error(res);
    }
    co_return result<void>{};
}

asio::awaitable<result<void>> engine_base::fallocate(int fd, int mode, std::uint64_t offset, std::uint64_t len)
{
    if (draining_)
        co_return errno_error(ECANCELED);
    gate_guard gate(*this);
    ++stats_.fallocates;
    raw_request r;
    r.op = raw_request::opcode::fallocate;
    r.fd = fd;
    r.mode = mode;
    r.offset = offset;
    r.range = len;
    int res = co_await perform_retrying(r);
    if (res < 0) {
        ++stats_.errors;
        co_return neg_errno_error(res);
    }
    co_return result<void>{};
}

asio::awaitable<result<void>> engine_base::clone_range(int in, std::uint64_t in_offset, int out,
                                                       std::uint64_t out_offset, std::uint64_t len)
{
    if (draining_)
        co_return errno_error(ECANCELED);
    gate_guard gate(*this);
    ++stats_.clones;
    raw_request r;
    r.op = raw_request::opcode::clone_range;
    r.fd = in;
    r.offset = in_offset;
    r.fd_out = out;
    r.offset_out = out_offset;
    r.range = len;
    int res = co_await perform_retrying(r);
    if (res < 0) {
        const auto ec = neg_errno_error(res);
        if (!clone_refused(ec))
            ++stats_.errors;
        co_return ec;
    }
    stats_.bytes_cloned += len;
    co_return result<void>{};
}

asio::awaitable<void> engine_base::drain()
{
    draining_ = true;
    while (stats_.in_flight > 0)
        co_await drained_.async_wait(bjd::nothrow_awaitable); // woken by cancel()
}

} // namespace bjd::io::detail
