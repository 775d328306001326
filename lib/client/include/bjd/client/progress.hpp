// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Job progress for `blockjobctl watch`: one view per job merged from query-block-jobs
/// (offset/len, speed, and blockjobd's dirty-bytes, rate and actively-synced) and
/// query-jobs (every job, with current-progress/total-progress and the error), a rate
/// estimate where the server reports none, and the two renderings: a progress bar line for
/// terminals and a key=value line for scripts.
#include <boost/json/array.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace bjd::client {

struct job_view {
    std::string id;
    std::string type;
    std::string status;
    std::int64_t done = 0;    ///< offset / current-progress
    std::int64_t total = 0;   ///< len / total-progress
    bool ready = false;
    bool paused = false;
    std::optional<std::int64_t> speed;         ///< limit, 0 = none (block jobs)
    std::optional<std::int64_t> rate;          ///< bytes/s as the server reports it
    std::optional<std::int64_t> dirty_bytes;   ///< mirror: left to copy again
    std::optional<bool> actively_synced;       ///< mirror write-blocking in effect and in sync
    std::optional<std::string> copy_mode;      ///< if the server reports it
    std::optional<std::string> error;
};

/// Merges the "return"s of query-block-jobs and query-jobs (either may be null), sorted by
/// id. A job in both takes its numbers from query-block-jobs.
std::vector<job_view> merge_jobs(const boost::json::array* block_jobs, const boost::json::array* jobs);

/// Bytes per second from successive samples of `done`, smoothed. (blockjobd's own "rate"
/// counts bytes written to the target only, not ranges skipped as zero.)
class rate_estimator {
public:
    using clock = std::chrono::steady_clock;
    void sample(const std::string& id, std::int64_t done, clock::time_point now);
    std::optional<double> rate(const std::string& id) const;
    void forget(const std::string& id) { state_.erase(id); }

private:
    struct state {
        std::int64_t done = 0;
        clock::time_point at;
        std::optional<double> rate;
    };
    std::map<std::string, state> state_;
};

/// The rate to show: `estimate` (the pace of `done`) once known, else the server's rate.
std::optional<double> effective_rate(const job_view& j, std::optional<double> estimate);

/// Seconds until `done` reaches `total` at `rate`; nullopt when unknown or not copying.
std::optional<std::int64_t> eta_seconds(const job_view& j, std::optional<double> rate);

/// One terminal line of at most `width` columns (no newline):
///   m0 mirror running [#####.....]  45.2% 462 MiB/1.00 GiB 100 MiB/s ETA 5s dirty 12.0 MiB
/// The bar shrinks to make room for the figures; below 6 columns of bar the copy mode, the
/// dirty bytes, the ETA and the rate go, in that order; then the bar goes.
std::string render_bar(const job_view& j, std::optional<double> rate, int width);

/// One line for scripts, key=value with raw numbers:
///   job=m0 type=mirror status=running offset=473956352 len=1073741824 rate=104857600 eta=5 dirty-bytes=12582912
/// (rate, eta, dirty-bytes, speed, copy-mode, actively-synced and error only where known).
std::string render_line(const job_view& j, std::optional<double> rate);

/// What must differ for a non-terminal to print a new line: everything but rate and ETA.
std::string change_key(const job_view& j);

} // namespace bjd::client
