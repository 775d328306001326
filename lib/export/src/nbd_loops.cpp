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
            auto& w = workers_.emplace_back();
            w.thread = std::thread([&ctx = w.ctx, p = polling_] {
                io::poll_loop loop(ctx);
                loop.set_params(p);
                loop.run();
            });
            loops_.emplace_back(w.ctx, unsigned(loops_.size()));
        }
        log::get("nbd")->debug("NBD connections run on {} event loops", loops_.size());
    }
    auto less = [](const nbd_loop& a, const nbd_loop& b) { return a.connections < b.connections; };
    return *std::min_element(loops_.begin(), loops_.end(), less);
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
