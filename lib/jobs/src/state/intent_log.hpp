// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The write-intent log of a mirror kept in --state-dir (docs/job-state.md, "After a crash"):
/// the hook on the mirror's source that makes a write's regions durable in `<job-id>.wil`
/// before the write is carried out, DRBD activity-log style.
///
/// In memory: `want_`, the regions the log must hold; `fast_`, those a durable record holds
/// and no clearing has dropped since (a write there goes on at once, no sync). A write to a
/// region outside `fast_` adds it to `want_` and waits; one writer coroutine at a time writes
/// the whole `want_` as the next record (pwrite of one slot, fdatasync) and wakes every write
/// it covers: concurrent marks share one sync (group commit).
///
/// Clearing, tied to the job's checkpoints: `begin_checkpoint` (at the instant the job takes
/// its bitmap snapshot) starts a new epoch and lists the marked regions with no write in
/// flight; `end_checkpoint`, once the checkpoint file (target flushed first) is durable, drops
/// those of them that saw no write since the snapshot. A region is thus never dropped while a
/// write the checkpoint does not cover may have changed it. Main loop only.
#include "bjd/block/node.hpp"
#include "bjd/event_flag.hpp"
#include "bjd/io/engine.hpp"
#include "bjd/jobs/job_state.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace bjd::jobs::detail {

class intent_log final : public block::write_intent_hook, public std::enable_shared_from_this<intent_log> {
public:
    intent_log(asio::any_io_executor ex, io::engine& engine, std::uint64_t size, std::uint64_t region,
               std::string generation);
    ~intent_log() override;
    intent_log(const intent_log&) = delete;
    intent_log& operator=(const intent_log&) = delete;

    /// Creates `dir`/`name` durably with no region marked, replacing any older log.
    /// `still_wanted` as for co_write_file_atomic.
    asio::awaitable<qapi::result<void>> create(const std::string& dir, const std::string& name,
                                               std::function<bool()> still_wanted = {});

    // block::write_intent_hook
    bool enter(std::uint64_t offset, std::uint64_t length) override;
    asio::awaitable<void> wait(std::uint64_t offset, std::uint64_t length) override;
    void leave(std::uint64_t offset, std::uint64_t length) override;

    struct ticket {
        std::uint64_t epoch = 0;
        std::vector<std::uint64_t> candidates;   ///< marked, no write in flight at the snapshot
    };
    ticket begin_checkpoint();
    /// The checkpoint taken at `t` is durable: drops what it covers, rewritten lazily.
    void end_checkpoint(const ticket& t);

    /// Requests between enter and leave.
    std::uint64_t in_flight() const noexcept { return in_flight_total_; }
    /// A record could not be written: the log no longer covers every write (writes go on
    /// unmarked; the caller makes the checkpoint unusable).
    bool failed() const noexcept { return !failure_.empty(); }
    const std::string& failure() const noexcept { return failure_; }
    /// No more records: waiting writes go on (the job left the graph).
    void stop();

    std::uint64_t region() const noexcept { return region_; }
    std::uint64_t records_written() const noexcept { return records_; }
    std::uint64_t writes_waited() const noexcept { return waited_; }
    std::uint64_t marked() const noexcept;

private:
    bool test(const std::vector<std::uint8_t>& b, std::uint64_t r) const noexcept { return (b[r / 8] >> (r % 8)) & 1u; }
    static void put(std::vector<std::uint8_t>& b, std::uint64_t r, bool v) noexcept;
    bool covered(std::uint64_t offset, std::uint64_t length) const noexcept;
    void kick();
    static asio::awaitable<void> writer(std::shared_ptr<intent_log> self);

    asio::any_io_executor ex_;
    io::engine& engine_;
    intent_record rec_;   ///< size, region, generation, seq of the last record started
    std::uint64_t region_;
    int fd_ = -1;
    std::vector<std::uint8_t> want_;
    std::vector<std::uint8_t> fast_;
    std::vector<std::uint32_t> in_flight_;
    std::vector<std::uint64_t> last_epoch_;
    std::uint64_t in_flight_total_ = 0;
    std::uint64_t epoch_ = 0;
    bool pending_ = false;   ///< want_ changed since the last record was started
    bool writing_ = false;
    bool stopped_ = false;
    std::string failure_;
    std::uint64_t records_ = 0;
    std::uint64_t waited_ = 0;
    event_flag changed_;
};

} // namespace bjd::jobs::detail
