// SPDX-License-Identifier: MIT
#pragma once
// The event loops NBD connections run on (docs/nbd-threads.md): the main loop, and on a
// machine with more than one core, worker loops with a thread each. A connection's socket, TLS
// session, request decoding and replies live on its loop; its block requests run on the main
// loop, which owns the block graph. A new connection goes to the loop with the fewest
// connections, the main loop first, so that a lone client keeps the shortest path.
#include "bjd/io/buffer.hpp"
#include "bjd/io/poll_loop.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace bjd::exports::detail {

namespace asio = boost::asio;

struct nbd_loop {
    nbd_loop(asio::io_context& c, unsigned i) : ctx(c), index(i), main(i == 0) {}
    asio::io_context& ctx;
    const unsigned index;          ///< 0 for the main loop, for the log
    const bool main;
    io::buffer_pool buffers;       ///< WRITE payloads and READ replies; used on this loop only
    std::size_t connections = 0;   ///< kept by the main loop
    /// Replies sent by this loop's connections: a worker loop's measure of whether polling
    /// pays (io::poll_probe). Used on this loop only.
    std::uint64_t replies = 0;
    /// Requests of this loop's connections that are being carried out: decoded, their reply
    /// not yet made. What `--poll-queued` counts (io::poll_params::queued): while clients wait
    /// on several, the next completion is near. Changed on this loop, read by the main loop too.
    std::atomic<std::uint64_t> executing{0};
};

/// Counts one request in its loop's `executing` for as long as it lives.
class executing_request {
public:
    explicit executing_request(nbd_loop& l) noexcept : loop_(l)
    {
        loop_.executing.fetch_add(1, std::memory_order_relaxed);
    }
    ~executing_request() { loop_.executing.fetch_sub(1, std::memory_order_relaxed); }
    executing_request(const executing_request&) = delete;
    executing_request& operator=(const executing_request&) = delete;

private:
    nbd_loop& loop_;
};

class nbd_loops {
public:
    /// `workers`: how many loops besides the main one; they start on the first pick().
    nbd_loops(asio::io_context& main, unsigned workers);
    ~nbd_loops();
    nbd_loops(const nbd_loops&) = delete;
    nbd_loops& operator=(const nbd_loops&) = delete;

    nbd_loop& main_loop() noexcept { return loops_.front(); }
    /// Main loop only: the loop for a new connection (count it in `connections`).
    nbd_loop& pick();
    /// Stops the worker loops and their threads (at the manager's end, when no connection is
    /// left).
    void join();
    /// `polling`: how the worker loops poll before they sleep, as the main loop does.
    void set_workers(unsigned n, const io::poll_params& polling)
    {
        wanted_ = n;
        polling_ = polling;
    }
    /// Main loop only: each running worker loop's polling, in order (loop 1 first).
    std::vector<io::poll_stats> worker_stats() const;
    /// Main loop only: the requests being carried out on all loops. The main loop carries out
    /// every loop's block requests, so it counts them all.
    std::uint64_t executing() const noexcept;

private:
    struct worker {
        /// Worker `n` (from 1) is loop "nbd-n" in the metrics and the log.
        explicit worker(unsigned n) : poller(ctx, "nbd-" + std::to_string(n)) {}
        asio::io_context ctx{1};
        asio::executor_work_guard<asio::io_context::executor_type> guard{ctx.get_executor()};
        io::poll_loop poller;
        std::thread thread;
    };

    unsigned wanted_;
    io::poll_params polling_;
    std::deque<worker> workers_;
    std::deque<nbd_loop> loops_;   // [0] is the main loop
};

} // namespace bjd::exports::detail
