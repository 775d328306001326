// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Prometheus metrics: block accounting and job progress in the text exposition format
/// (version 0.0.4), served by a minimal HTTP/1.1 server on a UNIX socket or loopback TCP.
///
/// Families (HELP and TYPE lines first, all samples of a family together):
/// * per node (label `node`) and per named drive (label `drive`): counters
///   `bjd_{rd,wr,unmap}_bytes_total`, `bjd_{rd,wr,flush,unmap}_operations_total`,
///   `bjd_{failed,invalid}_{rd,wr,flush,unmap}_operations_total`,
///   `bjd_{rd,wr,flush,unmap}_time_seconds_total` (QEMU's *_total_time_ns); gauges
///   `bjd_wr_highest_offset_bytes`, `bjd_idle_time_seconds` (once known),
///   `bjd_stats_start_time_seconds` (when the counters started: a change means a reset);
/// * per timed-statistics interval (extra label `interval`, seconds): gauges
///   `bjd_timed_{rd,wr,flush}_latency_{min,avg,max}_seconds`, `bjd_timed_{rd,wr}_queue_depth`;
/// * per latency histogram set with block-latency-histogram-set: histograms
///   `bjd_{rd,wr,flush}_latency_seconds` (`_bucket{le=...}` cumulative, `+Inf`, `_sum`,
///   `_count`; bucket `le=B` counts latencies below B, QEMU's half-open bins) and gauges
///   `bjd_{rd,wr,flush}_latency_histogram_start_time_seconds` (when the histogram was set: a
///   change means its buckets restarted from zero);
/// * per job (labels `id`, `type`, `status`): gauges `bjd_job_current_progress_bytes`,
///   `bjd_job_total_progress_bytes`.
/// * per event loop given (docs/polling.md; label `loop`: `main-loop`, and `nbd-1`, `nbd-2`, ...
///   for the workers of --nbd-threads once they run): counter `bjd_loop_wakeups_total` (label
///   `how`: `polled` for events caught while polling, `slept` for those that woke the loop),
///   gauge `bjd_loop_poll_window_seconds`.
/// * the I/O engine: counters `bjd_io_requests_total` (label `op`),
///   `bjd_io_registered_buffer_submissions_total`; gauges `bjd_io_buffer_memory_bytes` and
///   `bjd_io_buffer_held_bytes`, the memory of the large I/O buffers (docs/io-buffers.md).
///
/// Threading: everything runs on the main loop (the graph and the job manager live there).
#include "bjd/io/poll_loop.hpp"

#include <boost/asio/io_context.hpp>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::block { class graph; }
namespace bjd::jobs { class manager; }

namespace bjd::metrics {

/// An event loop's polling, as the metrics show it.
struct loop_sample {
    std::string id;   ///< the `loop` label
    io::poll_stats stats;
};

/// The exposition text for every node and drive of `g`, every job of `jobs` (may be null) and
/// the polling of `loops`.
std::string render(const block::graph& g, const jobs::manager* jobs, const std::vector<loop_sample>& loops = {});

/// `s` as a label value: backslash, double quote and newline escaped.
std::string escape_label(std::string_view s);

/// The HTTP endpoint. `GET /metrics` (or HEAD) answers 200 with `body()`; other paths 404,
/// other methods 405, malformed or oversized requests 400. One request per connection; a
/// client that stalls is dropped after a timeout and never blocks the loop.
class server {
public:
    explicit server(boost::asio::io_context& loop, std::function<std::string()> body);
    ~server();
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    /// `unix:PATH` (a stale socket file is replaced), `tcp:HOST:PORT` (HOST a numeric
    /// address; port 0 picks one) or `fd:NAME` (a socket systemd passed; see net::listener). Returns the bound TCP port (0 for UNIX). Throws
    /// std::runtime_error with a message for the user.
    unsigned short listen(std::string_view spec);
    /// Closes the listener (removing a UNIX socket file); open connections finish.
    void stop();

private:
    struct impl;
    std::shared_ptr<impl> impl_;
};

} // namespace bjd::metrics
