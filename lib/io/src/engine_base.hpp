// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// What both backends share: the request retry rules (EAGAIN/EINTR, short reads and writes),
/// the drain gate and the counters. A backend only supplies `perform`, one raw request to the
/// kernel or a worker, completing with the syscall's result or a negative errno.
#include "bjd/io/engine.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace bjd::io::detail {

/// One raw syscall-shaped request.
struct raw_request {
    enum class opcode : std::uint8_t { read, write, fsync, fdatasync, fallocate, clone_range };
    opcode op = opcode::read;
    int fd = -1;
    int fd_out = -1;            ///< clone_range's destination (`fd` is its source)
    int mode = 0;               ///< fallocate mode
    void* addr = nullptr;       ///< read/write buffer
    std::uint32_t len = 0;      ///< read/write length (a request never exceeds max_chunk)
    std::uint64_t offset = 0;
    std::uint64_t range = 0;    ///< fallocate and clone_range length
    std::uint64_t offset_out = 0;   ///< clone_range's offset in `fd_out`
    io_hint hint = io_hint::none;
};

/// Runs `r` on a thread of `pool` and completes on `ctx`'s loop, exactly once, with the
/// syscall's result or a negative errno. The thread-pool backend's `perform`, and every
/// backend's `perform_blocking`.
asio::awaitable<int> perform_on(asio::thread_pool& pool, asio::io_context& ctx, const raw_request& r);

/// Largest single read/write handed down; longer buffers are split (SQE lengths are 32-bit,
/// and Linux transfers at most 0x7ffff000 bytes per call anyway).
inline constexpr std::uint32_t max_chunk = 1u << 30;

class engine_base : public engine {
public:
    explicit engine_base(asio::io_context& ctx);

    asio::awaitable<result<std::size_t>> read(int fd, std::span<std::byte> buf, std::uint64_t offset,
                                              io_hint hint) final;
    asio::awaitable<result<void>> write(int fd, std::span<const std::byte> buf, std::uint64_t offset,
                                        io_hint hint) final;
    asio::awaitable<result<void>> fsync(int fd, bool datasync) final;
    asio::awaitable<result<void>> fallocate(int fd, int mode, std::uint64_t offset, std::uint64_t len) final;
    asio::awaitable<result<void>> clone_range(int in, std::uint64_t in_offset, int out, std::uint64_t out_offset,
                                              std::uint64_t len) final;
    asio::awaitable<void> drain() final;
    engine_stats stats() const noexcept override { return stats_; }

protected:
    /// Hands `r` to the backend. Completes exactly once, on the awaiting coroutine's executor,
    /// with the syscall result (≥ 0) or a negative errno.
    virtual asio::awaitable<int> perform(raw_request r) = 0;
    /// Hands `r` to a worker thread, for what the backend cannot do itself (io_uring:
    /// clone_range). The same contract as `perform`. By default a pool of two threads, made
    /// on first use.
    virtual asio::awaitable<int> perform_blocking(raw_request r);

    asio::io_context& ctx_;
    engine_stats stats_;

private:
    class gate_guard;
    /// Performs `r`, retrying EAGAIN/EINTR. Returns the final result or negative errno.
    asio::awaitable<int> perform_retrying(raw_request r);

    bool draining_ = false;
    asio::steady_timer drained_;    ///< cancelled when draining_ and nothing is in flight
    std::unique_ptr<asio::thread_pool> workers_;   ///< perform_blocking's, once needed
};

/// The io_uring backend, or the errno and a one-line reason why the ring could not be set up.
struct uring_setup_failure {
    int error = 0;
    std::string reason;
};
std::unique_ptr<engine> make_uring_engine(asio::io_context& ctx, const engine_options& opts,
                                          uring_setup_failure& failure);

/// The thread-pool backend. Never fails (beyond std::system_error when threads can't start).
std::unique_ptr<engine> make_thread_engine(asio::io_context& ctx, const engine_options& opts);

/// A one-line explanation of a failed io_uring_setup with positive errno `e`, naming the
/// cause and the remedy. Reads /proc/sys/kernel/io_uring_disabled for EPERM.
std::string explain_uring_failure(int e);

/// The errno forced by BJD_FORCE_URING_FAILURE, or 0.
int forced_uring_failure();

} // namespace bjd::io::detail
