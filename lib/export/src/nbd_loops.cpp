// SPDX-License-Identifier: MIT
#include "nbd_loops.hpp"

#include "bjd/log.hpp"

#include <algorithm>

namespace bjd::exports::detail {

nbd_loops::nbd_loops(asio::io_context& main, unsigned workers) : wanted_(workers)
{
    loops_.emplace_back(main, 0);
}

nbd_loops::~nbd_loops()
{
    join();
}

nbd_loop& nbd_loops::pick()
{
    if (workers_.empty() && wanted_ > 0) {
        for (unsigned i = 0; i < wanted_; ++i) {
            auto& w = workers_.emplace_back(i + 1);
            auto& l = loops_.emplace_back(w.ctx, unsigned(loops_.size()));
            // Before the thread: it is the loop's only user then.
            w.poller.set_params(polling_);
            w.poller.set_progress([&l] { return l.replies; });
            w.poller.set_in_flight([&l] { return l.executing.load(std::memory_order_relaxed); });
            w.thread = std::thread([&poller = w.poller] { poller.run(); });
        }
        log::get("nbd")->debug("NBD connections run on {} event loops", loops_.size());
    }
    auto less = [](const nbd_loop& a, const nbd_loop& b) { return a.connections < b.connections; };
    return *std::min_element(loops_.begin(), loops_.end(), less);
}

std::vector<io::poll_stats> nbd_loops::worker_stats() const
{
    std::vector<io::poll_stats> out;
    for (const auto& w : workers_)
        out.push_back(w.poller.stats());
    return out;
}

std::uint64_t nbd_loops::executing() const noexcept
{
    std::uint64_t n = 0;
    for (const auto& l : loops_)
        n += l.executing.load(std::memory_order_relaxed);
    return n;
}

void nbd_loops::join()
{
    for (auto& w : workers_) {
        w.guard.reset();
        w.ctx.stop();
        if (w.thread.joinable())
            w.thread.join();
    }
}

} // namespace bjd::exports::detail
