// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The I/O engine: positional file I/O as C++20 coroutines on an Asio event loop.
///
/// One engine per event-loop thread (`asio::io_context`), owned by that loop. Two backends
/// share this interface: io_uring (one ring per loop, completions through an eventfd the loop
/// watches, submissions batched per loop turn) and a thread pool (`aio=threads`).
///
/// Exactly once: every operation either fails before anything reaches the kernel or the
/// thread pool, or completes exactly once. Buffers belong to the caller and must stay valid
/// until the awaited operation has returned. Operations must be awaited on the engine's own
/// executor (the loop thread), and the engine must be destroyed on that thread, after
/// `drain()` and before its `io_context`.
///
/// Test hook: when the environment variable `BJD_FORCE_URING_FAILURE` is `EPERM` or `ENOSYS`
/// (or any errno number), `probe_io_uring` and `make_engine` behave as if the kernel had
/// refused `io_uring_setup` with that errno, so the fallback path can be exercised anywhere.
#include "bjd/io/buffer.hpp"
#include "bjd/result.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>

namespace bjd::io {

namespace asio = boost::asio;

enum class backend { io_uring, threads };

/// "io_uring" / "threads": the wire names of QEMU's BlockdevAioOptions.
const char* to_string(backend b) noexcept;

/// Whether io_uring works here, and why not when it does not. Filled by `probe_io_uring`.
struct uring_probe {
    bool usable = false;
    int error = 0;            ///< positive errno of the failed setup (EPERM, ENOSYS, …), 0 if usable
    std::string reason;       ///< one line for logs and QMP: what failed and what to do about it
};

/// Tries to set up (and immediately tear down) a small ring. Cheap; safe from any thread.
/// Looks at `kernel.io_uring_disabled` to explain EPERM. Honours `BJD_FORCE_URING_FAILURE`.
uring_probe probe_io_uring();

/// Whether a failed `engine::clone_range` was the kernel declining to share extents here
/// (EOPNOTSUPP, EXDEV, EINVAL): an answer after which the caller reads and writes instead,
/// not a failed request.
bool clone_refused(const std::error_code& ec) noexcept;

/// Counters of one engine, for `query-*` style reporting and tests. Read on the loop thread.
struct engine_stats {
    std::uint64_t reads = 0;          ///< read() calls accepted
    std::uint64_t writes = 0;         ///< write() calls accepted
    std::uint64_t syncs = 0;          ///< fsync() calls accepted
    std::uint64_t fallocates = 0;     ///< fallocate() calls accepted
    std::uint64_t clones = 0;         ///< clone_range() calls accepted
    std::uint64_t bytes_read = 0;
    std::uint64_t bytes_written = 0;
    std::uint64_t bytes_cloned = 0;   ///< shared by clone_range(), not copied
    std::uint64_t errors = 0;         ///< operations that returned an error
    std::uint64_t retries = 0;        ///< resubmissions after EAGAIN/EINTR
    std::uint64_t short_resumes = 0;  ///< resubmissions for the rest of a short read/write
    std::uint64_t in_flight = 0;      ///< operations currently awaited
    std::uint64_t max_in_flight = 0;  ///< high-water mark of `in_flight`
    // io_uring only (0 for the thread pool):
    std::uint64_t sqes = 0;           ///< SQEs handed to the kernel (including resubmissions)
    std::uint64_t submit_calls = 0;   ///< io_uring_submit() calls (one per loop turn with work)
    std::uint64_t sq_waits = 0;       ///< requests queued because queue_depth were in the kernel
    std::uint64_t fixed = 0;          ///< reads and writes into a registered range (register_range)
    unsigned setup_flags = 0;         ///< IORING_SETUP_* flags the ring was created with
};

/// How a read or write should travel to the kernel.
enum class io_hint : std::uint8_t {
    none,
    /// The CPU will copy the data: a large request on a file opened without O_DIRECT, whose
    /// pages are cached. io_uring would copy them inline, inside the loop's io_uring_enter,
    /// stalling every socket the loop serves for the length of the copy; with this hint its
    /// kernel workers do it (IOSQE_ASYNC) beside the loop. The thread pool copies off the
    /// loop anyway and ignores it.
    offload,
};

class engine {
public:
    virtual ~engine() = default;

    /// The backend that is really doing the I/O (after any fallback).
    virtual backend kind() const noexcept = 0;

    /// Reads `buf.size()` bytes at `offset`. Short reads are resumed; returns the number of
    /// bytes read, which is less than asked only at end of file. EAGAIN/EINTR are retried.
    /// Errors: the errno of the failed read (EIO, EBADF, EINVAL for misaligned O_DIRECT, …).
    virtual asio::awaitable<result<std::size_t>> read(int fd, std::span<std::byte> buf, std::uint64_t offset,
                                                      io_hint hint = io_hint::none) = 0;

    /// Writes all of `buf` at `offset`. A short write that cannot make progress is ENOSPC.
    virtual asio::awaitable<result<void>> write(int fd, std::span<const std::byte> buf, std::uint64_t offset,
                                                io_hint hint = io_hint::none) = 0;

    /// fsync(2), or fdatasync(2) when `datasync`.
    virtual asio::awaitable<result<void>> fsync(int fd, bool datasync) = 0;

    /// fallocate(2) with `mode` (FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE, …).
    /// Errors include EOPNOTSUPP when the file system lacks the mode.
    virtual asio::awaitable<result<void>> fallocate(int fd, int mode, std::uint64_t offset, std::uint64_t len) = 0;

    /// Makes `len` bytes of `out` at `out_offset` share the extents of `in` at `in_offset`
    /// (ioctl FICLONERANGE, a reflink): nothing is copied, later writes to either file copy
    /// on write. All or nothing. Where the file system cannot share extents the kernel refuses
    /// at once (EOPNOTSUPP, EXDEV across file systems, EINVAL off its block size, except at
    /// the end of `in`), where copy_file_range(2) would copy slowly through the page cache
    /// instead. io_uring has no such operation, and the kernel may wait for writes in flight
    /// on either file: both backends run it on a worker thread.
    virtual asio::awaitable<result<void>> clone_range(int in, std::uint64_t in_offset, int out,
                                                      std::uint64_t out_offset, std::uint64_t len) = 0;

    /// Stops accepting new work and waits until every in-flight operation has completed.
    /// Operations started after drain() fail at once with ECANCELED, nothing submitted.
    /// Several callers may await drain() at the same time; it is permanent.
    virtual asio::awaitable<void> drain() = 0;

    /// Counters since creation. Loop thread only.
    virtual engine_stats stats() const noexcept { return {}; }

    /// Registers `buf` for the requests that read or write within it (see registered_range).
    /// Worth it for buffers that live long and carry large requests, such as a copy's slots.
    /// Loop thread only. The thread pool registers nothing.
    virtual registered_range register_range(std::span<std::byte> buf)
    {
        (void)buf;
        return {};
    }
};

/// An aligned buffer of `size` bytes, registered with `e` for as long as it lives (the
/// registration ends just before the memory is freed, see registered_range). For buffers that
/// carry many large requests, such as a copy's slots. It must be freed on `e`'s loop thread.
aligned_buffer make_registered_buffer(engine& e, std::size_t size);

/// Per-engine tuning. Defaults suit a mirror with 16 requests in flight plus NBD clients.
struct engine_options {
    unsigned queue_depth = 256;    ///< io_uring SQ entries = most requests in the kernel at once
                                   ///< (more are queued and submitted as slots free); 1..4096
    unsigned pool_threads = 8;     ///< thread-pool backend workers (at least 1)
};

/// Creates the engine for `ctx`. With `want == io_uring`, a ring that cannot be set up falls
/// back to the thread pool; the returned engine's kind() says so, and `fallback_reason` (if not
/// null) receives why. The caller must log and report that; this function logs it too, at warn.
std::unique_ptr<engine> make_engine(asio::io_context& ctx, backend want, const engine_options& opts = {},
                                    std::string* fallback_reason = nullptr);

} // namespace bjd::io
