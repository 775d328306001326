// SPDX-License-Identifier: MIT
// Request semantics shared by every backend: retries, short I/O, the drain gate, counters.
#include "engine_base.hpp"

#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/as_tuple.hpp>

#include <algorithm>
#include <cerrno>
#include <fcntl.h>

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

} // namespace

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
    for (unsigned attempt = 0;; ++attempt) {
        int res = co_await perform(r);
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

asio::awaitable<void> engine_base::drain()
{
    draining_ = true;
    while (stats_.in_flight > 0)
        co_await drained_.async_wait(asio::as_tuple(asio::use_awaitable)); // woken by cancel()
}

} // namespace bjd::io::detail
