// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Mirror internals shared by the filter (mirror_top.cpp), the copy loop (mirror_job.cpp) and
/// the command entry points (mirror_start.cpp). Main loop only.
#include "bjd/block/dirty_bitmap.hpp"
#include "bjd/block/filter_node.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/block/node.hpp"
#include "bjd/io/buffer.hpp"
#include "bjd/jobs/convergence.hpp"
#include "bjd/jobs/copy_window.hpp"
#include "bjd/jobs/guest_yield.hpp"
#include "bjd/jobs/job_driver.hpp"
#include "bjd/jobs/mirror.hpp"
#include "copy/copy_arena.hpp"
#include "copy/job_nodes.hpp"
#include "copy/pacing.hpp"

#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace bjd::jobs::detail {

class mirror_job;
class intent_log;

/// The journal of a mirror kept in --state-dir, shared with its coroutine (mirror_journal.cpp).
struct mirror_journal {
    mirror_journal(asio::any_io_executor ex, mirror_journal_config c) : cfg(std::move(c)), timer(ex) {}
    mirror_job* job = nullptr;   ///< null once the job left the graph: the coroutine ends
    mirror_journal_config cfg;
    std::shared_ptr<intent_log> log;
    asio::steady_timer timer;
    bool poked = false;          ///< a checkpoint is wanted now (READY)
    bool first_done = false;     ///< a checkpoint was written
    std::uint64_t checkpoints = 0;
};

/// The mirror_top filter inserted above the source. Forwards everything to the source; in
/// write-blocking mode writes also go to the target before they complete, in background mode
/// data writes into chunks already copied go to the target without being waited for. `drain` holds new
/// requests and waits for in-flight ones (convergence and pivot); `release` lets held
/// requests go on, to `redirect` when the filter has left the graph.
class mirror_top final : public block::filter_node {
public:
    mirror_top(block::node_options o, std::shared_ptr<block::node> source, bool is_implicit, asio::any_io_executor ex);

    std::string_view driver() const noexcept override { return "mirror_top"; }

    void attach_job(mirror_job* j) noexcept { job_ = j; }
    asio::awaitable<void> drain();
    /// Stops holding; held and future requests go to `to` (null: the source).
    void release(std::shared_ptr<block::node> to);
    bool drained() const noexcept { return held_; }

protected:
    asio::awaitable<result<void>> do_read(std::uint64_t offset, std::span<std::byte> buf) override;
    asio::awaitable<result<void>> do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) override;
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t offset, std::uint64_t length, block::zero_flags f) override;
    asio::awaitable<result<void>> do_discard(std::uint64_t offset, std::uint64_t length) override;
    asio::awaitable<result<void>> do_flush() override;
    asio::awaitable<result<block::extent>> do_block_status(std::uint64_t offset, std::uint64_t length) override;

private:
    /// The node a request goes to, counted in flight; null while requests are held. A request
    /// that gets null waits in enter_request, then is admitted (the common case costs no
    /// coroutine frame).
    block::node* admit() noexcept;
    asio::awaitable<block::node*> enter_request();
    void leave_request();
    /// leave_request for a read or a write that entered at `entered`: its latency goes to
    /// the job (guest_io). Flushes and block status are not timed.
    void leave_timed(std::chrono::steady_clock::time_point entered);

    std::shared_ptr<block::node> redirect_;
    bool held_ = false;
    unsigned inflight_ = 0;
    mirror_job* job_ = nullptr;
    event_flag changed_;
};

enum class op_kind { copy, zero, discard, flush };

/// One request to the target that a force-cancel may stop waiting for (QEMU's block/mirror.c: in-flight
/// target I/O is cancelled). It owns what the request uses, so it can finish after the job.
struct target_request {
    explicit target_request(asio::any_io_executor ex) : done(ex) {}
    target_request(const target_request&) = delete;
    target_request& operator=(const target_request&) = delete;
    ~target_request()
    {
        if (pool)
            pool->put(std::move(copy));
    }
    /// copy only: the `length` bytes to write.
    const std::byte* bytes() const noexcept { return piece ? piece.get() : copy.data(); }

    std::shared_ptr<block::node> target;
    std::shared_ptr<std::byte> piece;   ///< a copy's memory in the arena, kept alive with the request
    io::aligned_buffer copy;            ///< or a writer's data, copied (mirror_job::bounce)
    std::shared_ptr<io::buffer_pool> pool;   ///< where `copy` goes back
    /// copy only: the source, to share its extents (block::node::clone_to) instead of writing bytes()
    std::shared_ptr<block::node> clone_from;
    op_kind kind = op_kind::copy;
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    bool fua = false;
    bool may_unmap = false;
    std::optional<result<void>> outcome;       ///< set when the target answered
    event_flag done;                           ///< notified on the answer or on force-cancel
    /// A forwarded write (mirror_job::background_write): the job that settles it once the
    /// source has answered and the target has, or no longer counts (force-cancel). Null once
    /// settled: the request never touches the job after that.
    mirror_job* forwarder = nullptr;
    bool source_done = false;   ///< the writer's source write returned
    bool source_ok = false;     ///< and succeeded
};

/// What the copy loop needs, resolved by mirror_start.cpp.
struct mirror_setup {
    block::graph* graph = nullptr;
    std::shared_ptr<block::node> source;
    std::shared_ptr<block::node> target;
    std::shared_ptr<mirror_top> filter;
    std::optional<std::string> replaces;   ///< explicit replaces (else the source)
    qapi::mirror_sync_mode sync = qapi::mirror_sync_mode::full;
    qapi::mirror_copy_mode copy_mode = qapi::mirror_copy_mode::background;
    qapi::blockdev_on_error on_source_error = qapi::blockdev_on_error::report;
    qapi::blockdev_on_error on_target_error = qapi::blockdev_on_error::report;
    std::uint64_t granularity = 65536;
    std::uint64_t buf_size = 0;   ///< 0: left to the daemon (launch sets buf_size_max)
    /// More than buf_size: the copy may keep up to this in flight while that makes it faster
    /// (copy_window.hpp); otherwise buf_size is fixed, as the user asked.
    std::uint64_t buf_size_max = 0;
    copy_window::config window;   ///< the growth rule's timings (tests shorten them)
    bool unmap = true;
    bool zero_target = false;
    bool release_target = false;   ///< drive-mirror: drop the target node at the end if unused
    bool target_is_zero = false;   ///< blockdev-mirror target-is-zero: skip zero source ranges
    /// drive-mirror qcow2 target opened without its backing chain: the node attached as its
    /// backing in prepare (QEMU's block/mirror.c). While it is pending, zero ranges are copied as data,
    /// since an unallocated target cluster would show the backing afterwards.
    std::shared_ptr<block::node> deferred_backing;
    /// drive-mirror mode=existing into a qcow2 whose header names a backing file: the image
    /// was opened without it, and the chain is opened from the header once the job converged
    /// (QEMU's MIRROR_OPEN_BACKING_CHAIN). Copies like `deferred_backing` meanwhile.
    bool open_header_backing = false;
    /// A backing file will appear under the target: zeroes are copied as data, whole clusters.
    bool backing_pending() const noexcept { return deferred_backing || open_header_backing; }
    /// Active commit (QEMU's commit_active_start): the target is an image in the source's own
    /// backing chain. Only what lies above it is copied; the chain keeps reading it while the
    /// job writes it, and it grows to the source's size if it is smaller.
    bool target_is_backing = false;
    /// The target was reopened read-write for the job: read-only again unless it took the
    /// source's place (QEMU's mirror_exit_common, base_ro).
    bool target_reopened = false;
    job_type type = job_type::mirror;   ///< commit for an active commit
    std::optional<mirror_resume> resume;   ///< --state-dir: the bitmap to start from
    bool start_paused = false;             ///< --state-dir: user-paused before it runs
    std::optional<std::string> restore_note;
};

/// Creates the job for `s` (JOB_STATUS_CHANGE created), connects it to the graph and starts
/// it; when the graph refuses, the job ends at once (null) and the error says why.
/// `filter_node_name` names the mirror_top filter (null: an implicit node), checked by the caller.
qapi::result<void> launch(manager& m, mirror_setup s, const std::string& id, const job_options& o,
                          std::int64_t speed, const std::optional<std::string>& filter_node_name);

/// The checks and job start after the drive-mirror target exists (`pre_target`, null: opened
/// here, raw only). mirror_start.cpp.
qapi::result<void> start_prepared(manager& m, block::graph& g, const mirror_params& p,
                                  std::shared_ptr<block::node> pre_target,
                                  std::shared_ptr<block::node> deferred_backing);

class mirror_job final : public job_driver, public block::write_observer {
public:
    mirror_job(mirror_setup s, asio::any_io_executor ex);
    ~mirror_job() override;

    /// Connects the job to the graph: inserts the filter above the source and takes the job's
    /// permissions (QEMU's mirror_start_job: reading through the filter, sharing everything
    /// but resize; writing the target, sharing only unchanged writes). Called once the job
    /// exists, before start. On a conflict the graph is left as it was and the error says
    /// why ("Permission conflict on node …", "Failed to get \"write\" lock").
    qapi::result<void> attach(job& j);
    std::uint64_t granularity() const noexcept { return s_.granularity; }
    std::uint64_t buf_size() const noexcept { return s_.buf_size; }
    /// What the copy keeps in flight now: buf_size, or more when it may grow (copy_window.hpp).
    std::uint64_t window() const noexcept { return window_.size(); }

    // job_driver
    asio::awaitable<qapi::result<void>> run(job& j) override;
    qapi::result<void> complete(job& j) override;
    qapi::result<void> prepare(job& j) override;
    void abort(job& j) override;
    void clean(job& j) override;
    bool cancel(job& j, bool force) override;
    void set_speed(job& j, std::int64_t speed) override;
    qapi::result<void> change(job& j, const qapi::block_job_change_options& opts) override;
    void fill_info(const job& j, qapi::block_job_info& info) const override;

    /// save_mirror_progress (mirror.hpp).
    asio::awaitable<qapi::result<mirror_progress>> save_progress(job& j);
    /// start_mirror_journal (mirror.hpp).
    void start_journal(mirror_journal_config c);
    /// stop_mirror_journal (mirror.hpp); also when the job leaves the graph. Idempotent.
    void stop_journal();

    // write_observer (source)
    void on_write(std::uint64_t offset, std::uint64_t length) override;
    /// The job's bitmap, anonymous and not busy, as QEMU lists a mirror's.
    std::optional<block::dirty_bitmap_info> bitmap_info() const override;

    /// The filter's write path in write-blocking mode.
    bool active() const noexcept { return active_ && job_ && !job_->is_cancelled() && !error_; }
    asio::awaitable<result<void>> active_write(block::node& src, op_kind kind, std::uint64_t offset,
                                               std::span<const std::byte> buf, std::uint64_t length, bool fua,
                                               bool may_unmap);
    /// The filter's data writes in background mode: a write into chunks already copied is
    /// sent to the target too, without the writer waiting for it (docs/mirror-forwarding.md).
    asio::awaitable<result<void>> background_write(block::node& src, std::uint64_t offset,
                                                   std::span<const std::byte> buf, bool fua);
    /// A guest request through the filter took `latency`: the copy yields to guests by it
    /// (guest_yield.hpp).
    void guest_io(std::chrono::nanoseconds latency);
    /// The filter's other writes in background mode wait here until no overlapping write is
    /// between its source half and its bookkeeping.
    asio::awaitable<void> settle(std::uint64_t offset, std::uint64_t length);

private:
    static asio::awaitable<void> journal_loop(std::shared_ptr<mirror_journal> jn);
    /// One checkpoint: bitmap snapshot (in-flight chunks count as dirty), target flush,
    /// `<id>.ckpt`, then the log drops what it covers.
    static asio::awaitable<void> checkpoint(std::shared_ptr<mirror_journal> jn);
    void poke_journal();
    /// The bitmap as a progress record, chunks with requests in flight counted as dirty.
    mirror_progress snapshot(job& j) const;
    asio::awaitable<void> init_bitmap();
    /// Loads `s_.resume` into the bitmap and the counters; false (with a restore note on the
    /// job) when it does not fit this job.
    bool load_resume(job& j);
    asio::awaitable<void> iteration();
    asio::awaitable<void> wait_op() { co_await op_done_.wait(); }
    asio::awaitable<void> wait_all_ops();
    /// Sends `req` to the target and waits for its answer; null when a force-cancel stopped
    /// the wait (the request finishes on its own, holding the node and buffer).
    asio::awaitable<std::optional<result<void>>> target_io(std::shared_ptr<target_request> req);
    /// target_io in two halves: send (false when force-cancelled: nothing sent), then wait.
    bool target_send(const std::shared_ptr<target_request>& req);
    asio::awaitable<std::optional<result<void>>> target_answer(std::shared_ptr<target_request> req);
    bool in_source_half(std::uint64_t offset, std::uint64_t length) const;
    bool may_forward(std::uint64_t offset, std::uint64_t length);
    /// Bytes of forwarded writes on their way to the target at most: a quarter of the window.
    std::uint64_t forward_budget() const noexcept { return std::max<std::uint64_t>(window_.size() / 4, max_io()); }
    /// One copy request: a sixteenth of the window, at least 1 MiB.
    std::uint64_t max_io() const noexcept;
    /// The bookkeeping of a forwarded write, once its source half is done and its target half
    /// answered or abandoned (force-cancel); called by whichever comes last.
    void finish_forward(target_request& req);
    static asio::awaitable<void> perform(std::shared_ptr<target_request> req);
    std::shared_ptr<target_request> make_request(op_kind kind, std::uint64_t offset, std::uint64_t length);
    /// Gives `req` a copy of a writer's data: the request may outlive the writer's buffer.
    void bounce(target_request& req, std::span<const std::byte> data);
    static asio::awaitable<void> run_op(mirror_job* self, op_kind kind, std::uint64_t offset, std::uint64_t length,
                                        std::shared_ptr<std::byte> piece);
    void launch(op_kind kind, std::uint64_t offset, std::uint64_t length, std::shared_ptr<std::byte> piece);
    void hold_chunks(std::uint64_t offset, std::uint64_t length, int delta);
    bool chunks_busy(std::uint64_t offset, std::uint64_t length) const;
    /// Memory for a copy request of `len` bytes, from the arena; null when it has no room
    /// until an op in flight ends.
    std::shared_ptr<std::byte> take_piece(std::uint64_t len);
    /// Turns cloning off for the rest of the job, saying why in the log (once).
    void stop_cloning(const std::error_code& why);
    void handle_error(bool is_read, const std::error_code& ec);
    /// copy-mode auto: feeds the stall rule one sample, `remaining` bytes (what the job
    /// reports as left: dirty, in flight, active writes); on a stall, switches to
    /// write-blocking, logs why and emits BLOCK_JOB_COPY_MODE_CHANGED.
    void watch_convergence(job& j, std::uint64_t remaining);
    void account_rate(std::uint64_t bytes);
    /// A copy request of `bytes` completed: the window may change (copy_window.hpp), and with
    /// it the request size (max_io) and the yield rule's limits. Logs the decision.
    void size_window(std::uint64_t bytes);
    std::int64_t current_rate() const;
    /// Leaves the graph: stops the filter, drops the target permissions, pivots if `pivot`
    /// (QEMU's mirror_exit_common). Returns the pivot's failure, if any.
    qapi::result<void> exit_common(bool pivot);
    void release_edges();
    /// Puts the filter's parents back on the source and detaches the filter from it.
    void remove_filter();
    /// Lets the filter's held requests go on to `below` and closes the filter.
    void release_filter(const std::shared_ptr<block::node>& below);

    mirror_setup s_;
    asio::any_io_executor ex_;
    job* job_ = nullptr;
    block::dirty_bitmap bitmap_;
    std::vector<std::uint16_t> in_flight_;   ///< per chunk: ops and reservations covering it
    /// The copy's memory: the window, carved into the requests in flight (made at the first
    /// copy). A request keeps its piece, and the piece the arena, when a force-cancel stops
    /// waiting for it.
    std::shared_ptr<copy_arena> arena_;
    /// Copies of guests' writes on their way to the target (bounce; made at the first one).
    std::shared_ptr<io::buffer_pool> bounce_pool_;
    std::vector<std::shared_ptr<target_request>> requests_;   ///< target requests awaited
    bool force_cancelled_ = false;   ///< stop waiting for the target (set by cancel())
    std::unique_ptr<block::edge> main_edge_;        ///< job child on the filter: reads, shares all but resize
    std::unique_ptr<block::edge> target_io_;        ///< the job's writes to the target
    std::unique_ptr<block::edge> target_job_edge_;  ///< job child on the target: takes nothing
    std::optional<job_nodes> intermediates_;        ///< active commit: the nodes between source and target
    event_flag op_done_;
    rate_limiter limiter_;
    copy_window window_;   ///< bytes the copy keeps in flight at most (buf-size, or grown from it)
    guest_yield yield_;   ///< bytes the copy may have in flight while guests use the source
    std::uint64_t cursor_ = 0;                ///< next chunk to look at
    unsigned ops_ = 0;
    std::uint64_t in_flight_bytes_ = 0;
    std::uint64_t active_bytes_ = 0;
    /// Forwarded writes (background_write) on their way to the target; their chunks are held.
    std::uint64_t forward_bytes_ = 0;
    /// Writes may be forwarded: the initial bitmap is built and the loop has not ended.
    bool forwarding_ = false;
    /// Background copies share the source's extents with the target (block::node::clone_to):
    /// both are files, or raw nodes over files. Off for the rest of the job after the first
    /// refusal or failure.
    bool clone_ = false;
    std::uint64_t cloned_ = 0;   ///< bytes cloned, for the log
    std::uint64_t forwarded_writes_ = 0;   ///< forwarded writes that landed, for the log
    std::uint64_t forwarded_total_ = 0;    ///< and their bytes
    guest_yield::clock::time_point yield_logged_{};   ///< last "yielding" log line (one per 10 s, none in the first 10 s)
    /// Ranges of active writes between their source and target halves: on_write() leaves
    /// them clean, since the target gets the same request before the writer is answered
    /// (QEMU disables the bitmap in write-blocking mode for the same reason).
    std::vector<std::pair<std::uint64_t, std::uint64_t>> active_ranges_;
    bool active_ = false;
    /// copy-mode auto armed: background until watch_ sees the remainder stop shrinking.
    bool auto_ = false;
    /// The loop has been over the whole bitmap once (the cursor wrapped, or nothing was
    /// dirty): from then on the remainder is what the writer adds, and auto may judge it.
    bool first_pass_done_ = false;
    convergence_watch watch_;
    bool actively_synced_ = false;
    bool should_complete_ = false;
    bool exited_ = false;
    bool aborted_ = false;   ///< failed, or cancelled before READY
    bool drain_paused_ = false;
    bool scan_done_ = false;   ///< the initial bitmap is complete (saved progress is usable)
    std::optional<std::string> error_;
    int error_errno_ = 0;   ///< errno behind error_ (0: none, e.g. an op threw)
    std::chrono::steady_clock::time_point rate_window_start_{};
    std::uint64_t rate_window_bytes_ = 0;
    std::int64_t last_rate_ = 0;
    std::shared_ptr<mirror_journal> journal_;
};

} // namespace bjd::jobs::detail
