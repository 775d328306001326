// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// What the copying jobs that walk an image in steps share (block-stream, an intermediate
/// block-commit, blockdev-backup): the loop over the steps, paced by `speed`, stopped by a
/// cancel and ruled by the on-error policies; and the pieces a step copies concurrently.
#include "bjd/jobs/job_driver.hpp"
#include "bjd/result.hpp"
#include "copy/guest_watch.hpp"
#include "copy/pacing.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

namespace bjd::jobs::detail {

/// What one step of a copy did: how far it got from its offset, whether it copied (paced),
/// and on failure whether reading the source failed (else writing the target).
struct copy_step {
    result<void> r;
    std::uint64_t length = 0;
    bool copied = false;
    bool in_source = true;
};

/// How copy_loop walks, and what it does with each step's outcome.
struct step_policy {
    /// The action for a step whose read (source) or write (target) failed.
    qapi::blockdev_on_error on_source_error = qapi::blockdev_on_error::report;
    qapi::blockdev_on_error on_target_error = qapi::blockdev_on_error::report;
    /// The most one step spans without a speed limit, and with one (kept small so that
    /// `speed` is followed closely).
    std::uint64_t step = 0;
    std::uint64_t throttled_step = 0;
    /// An ignored failure still fails the job at the end (QEMU's stream and commit); if not,
    /// it is forgotten and the job goes on as if the step had been done.
    bool ignored_fails_job = true;
    /// The loop sets the progress total to the length and adds each step's length as done;
    /// if not, the steps keep the progress themselves.
    bool counts_progress = true;
};

/// Runs pieces of a step concurrently: `piece(slot, offset, length)`, at most `depth` at
/// once (`slot` < depth tells the running ones apart, for their buffers), and at most what
/// `limit()` says at the moment, if given (the copy yielding to guests: guest_watch).
class piece_pool {
public:
    using piece_fn = std::function<asio::awaitable<copy_step>(unsigned, std::uint64_t, std::uint64_t)>;
    using limit_fn = std::function<unsigned()>;
    piece_pool(const asio::any_io_executor& ex, unsigned depth, piece_fn piece, limit_fn limit = {});
    piece_pool(const piece_pool&) = delete;
    piece_pool& operator=(const piece_pool&) = delete;

    /// Waits for a free slot; false once a piece failed (start no more).
    asio::awaitable<bool> ready();
    /// Starts a piece on a free slot (after ready() said true).
    void spawn(std::uint64_t offset, std::uint64_t length);
    /// Waits for every piece started; the first failure, if any. Must be awaited before the
    /// pool, or what its pieces use, goes away.
    asio::awaitable<std::optional<copy_step>> join();

private:
    struct state;
    std::shared_ptr<state> st_;
};

/// A job driver that copies with copy_loop; `speed` paces it.
class copy_driver : public job_driver {
public:
    explicit copy_driver(asio::any_io_executor ex) : ex_(std::move(ex)) {}
    void set_speed(job& j, std::int64_t speed) override;

protected:
    using step = copy_step;

    /// Walks [0, len) in steps of at most `policy.step` (`throttled_step` when a speed is
    /// set): sleeps as `speed` asks, stops when cancelled, and on a failed step does what the
    /// policy says for where it failed (stop: the same step again once resumed; ignore: on
    /// past the step's length). The error is the first failure's, with its errno on the job.
    asio::awaitable<qapi::result<void>> copy_loop(job& j, std::uint64_t len, const step_policy& policy,
                                                  std::function<asio::awaitable<step>(std::uint64_t, std::uint64_t)> do_step);

    /// Copies [offset, offset+n) as pieces of at most `piece_size`, `depth` at once, and waits
    /// for all. The first failure is the step's.
    asio::awaitable<step> in_pieces(std::uint64_t offset, std::uint64_t n, std::uint64_t piece_size, unsigned depth,
                                    piece_pool::piece_fn piece);

    /// A piece_pool limit that lets the copy yield to the guests of the filter given to
    /// `guests_.watch()` (none watched: no limit but `depth`).
    piece_pool::limit_fn yield_to_guests(std::uint64_t piece_size, unsigned depth)
    {
        return [this, piece_size, depth] { return guests_.pieces(piece_size, depth); };
    }

    asio::any_io_executor ex_;
    rate_limiter limiter_;
    guest_watch guests_;
};

} // namespace bjd::jobs::detail
