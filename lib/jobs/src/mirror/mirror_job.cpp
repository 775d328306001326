// SPDX-License-Identifier: MIT
// The mirror copy loop (QEMU's block/mirror.c): initial dirty bitmap per sync mode, chunk-merging
// iterations with bounded in-flight ops, READY, convergence, write-blocking, pivot.
#include "mirror/mirror_job.hpp"

#include "bjd/block/driver.hpp"
#include "bjd/qapi/events.hpp"
#include "copy/chain.hpp"
#include "jobs_log.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cassert>
#include <cstring>

namespace bjd::jobs::detail {

namespace {

constexpr unsigned max_in_flight = 16;
constexpr std::uint64_t min_io = 1 << 20;
constexpr auto slice = std::chrono::milliseconds(100);

/// One copy request for a window: a sixteenth of it (QEMU's 16 in flight), at least 1 MiB.
std::uint64_t request_size(std::uint64_t window) { return std::min(std::max(window / max_in_flight, min_io), window); }

double mib(double bytes) { return bytes / (1 << 20); }

} // namespace

mirror_job::mirror_job(mirror_setup s, asio::any_io_executor ex)
    : s_(std::move(s)),
      ex_(ex),
      bitmap_(s_.source->size(), s_.granularity),
      in_flight_(bitmap_.chunks()),
      op_done_(ex),
      window_(s_.buf_size, std::max(s_.buf_size, s_.buf_size_max), s_.window),
      yield_(max_io(), window_.size())
{
    active_ = s_.copy_mode == qapi::mirror_copy_mode::write_blocking;
    auto_ = s_.copy_mode == qapi::mirror_copy_mode::auto_;
    clone_ = s_.source->can_clone() && s_.target->can_clone();
}

mirror_job::~mirror_job()
{
    // clean() normally did this already; a job that never started still has its hooks.
    if (!exited_ && s_.filter)
        (void)exit_common(false);
    stop_journal();
    s_.source->remove_write_observer(this);
    for (const auto& r : requests_)
        r->forwarder = nullptr;   // settled before run() returned; never let one call back
}

qapi::result<void> mirror_job::attach(job& j)
{
    const std::string user = std::string(qapi::to_string(s_.type)) + " job '" + j.id() + "'";
    // Every parent of the source now goes through the filter (QEMU's bdrv_append).
    if (auto r = detail::insert_filter(*s_.graph, s_.filter, *s_.source); !r) {
        exited_ = true;
        return r;
    }
    s_.filter->attach_job(this);
    main_edge_ = std::make_unique<block::edge>(block::parent_kind::job, user, "main node");
    (void)main_edge_->set_perms(block::perm_consistent_read,
                                block::perm_consistent_read | block::perm_write | block::perm_write_unchanged);
    target_io_ = std::make_unique<block::edge>(block::parent_kind::anonymous, user, "root");
    // Active commit writes an image its own chain reads and writes through: share that, and
    // take resize when the base must grow to the top's size (QEMU's mirror_start_job).
    unsigned target_perm = block::perm_write;
    unsigned target_shared = block::perm_write_unchanged;
    if (s_.target_is_backing) {
        target_shared |= block::perm_consistent_read | block::perm_write;
        if (s_.target->size() < s_.source->size())
            target_perm |= block::perm_resize;
    }
    (void)target_io_->set_perms(target_perm, target_shared);
    target_job_edge_ = std::make_unique<block::edge>(block::parent_kind::job, user, "target");
    qapi::result<void> r = main_edge_->attach(s_.filter);
    if (r)
        r = target_io_->attach(s_.target);
    if (r)
        r = target_job_edge_->attach(s_.target);
    if (r && s_.target_is_backing) {
        // The images between the top and the base: held, and left in the chain at the end.
        auto& held = intermediates_.emplace(user, qapi::to_string(s_.type));
        for (block::node* i = chain_next(*s_.source); r && i && i != s_.target.get(); i = chain_next(*i))
            r = held.hold(i->shared_from_this(), "intermediate node", 0);
    }
    if (!r) {
        release_edges();
        remove_filter();
        release_filter(s_.source);
        exited_ = true;
        return r;
    }

    job_ = &j;
    limiter_.set_speed(j.speed());
    s_.source->add_write_observer(this);
    const std::string why = "block device is in use by block job: " + std::string(qapi::to_string(s_.type));
    s_.source->set_blocker(why);
    s_.target->set_blocker(why);
    // Until the bitmap is built, the whole device is the estimate: never len 0 with work ahead.
    if (s_.sync != qapi::mirror_sync_mode::none && s_.source->size() == s_.target->size())
        j.progress_set_remaining(s_.source->size());
    return {};
}

void mirror_job::release_edges()
{
    main_edge_.reset();
    target_io_.reset();
    target_job_edge_.reset();
    intermediates_.reset();
}

void mirror_job::remove_filter()
{
    // The filter's parents go back to what it filtered (they take there what they took
    // through it, so this cannot conflict).
    detail::take_out_filter(*s_.filter, "mirror");
}

void mirror_job::release_filter(const std::shared_ptr<block::node>& below)
{
    s_.filter->attach_job(nullptr);
    s_.filter->release(below);
    s_.graph->close_later(ex_, s_.filter);
}

// ---- bookkeeping -----------------------------------------------------------------------------

void mirror_job::hold_chunks(std::uint64_t offset, std::uint64_t length, int delta)
{
    if (length == 0)
        return;
    std::uint64_t g = bitmap_.granularity();
    for (std::uint64_t c = offset / g; c <= (offset + length - 1) / g && c < in_flight_.size(); ++c)
        in_flight_[c] = static_cast<std::uint16_t>(in_flight_[c] + delta);
}

bool mirror_job::chunks_busy(std::uint64_t offset, std::uint64_t length) const
{
    if (length == 0)
        return false;
    std::uint64_t g = bitmap_.granularity();
    for (std::uint64_t c = offset / g; c <= (offset + length - 1) / g && c < in_flight_.size(); ++c)
        if (in_flight_[c])
            return true;
    return false;
}

std::shared_ptr<std::byte> mirror_job::take_piece(std::uint64_t len)
{
    if (!arena_) {
        // No larger than the source: a window beyond it would only pin memory.
        const std::uint64_t most = std::max(s_.buf_size, s_.buf_size_max);
        const std::uint64_t cap = std::min(most, std::max<std::uint64_t>(s_.source->size(), io::direct_alignment));
        arena_ = copy_arena::make(s_.graph->engine(), cap, std::min<std::uint64_t>(window_.size(), cap));
    }
    if (auto p = arena_->take(len))
        return p;
    if (ops_ > 0)
        return nullptr;   // one of them gives its piece back
    // Nothing in flight and still no room: requests that a force-cancel stopped waiting for
    // hold the arena. The job is ending; this piece is its own.
    auto b = std::make_shared<io::aligned_buffer>(len);
    return {b, b->data()};
}

void mirror_job::account_rate(std::uint64_t bytes)
{
    auto now = std::chrono::steady_clock::now();
    if (rate_window_start_ == std::chrono::steady_clock::time_point{})
        rate_window_start_ = now;
    rate_window_bytes_ += bytes;
    auto el = now - rate_window_start_;
    if (el >= std::chrono::seconds(1)) {
        last_rate_ = static_cast<std::int64_t>(rate_window_bytes_ / std::chrono::duration<double>(el).count());
        rate_window_start_ = now;
        rate_window_bytes_ = 0;
    }
}

std::uint64_t mirror_job::max_io() const noexcept
{
    return request_size(window_.size());
}

void mirror_job::size_window(std::uint64_t bytes)
{
    const std::uint64_t before = window_.size();
    const bool judged = window_.completed(copy_window::clock::now(), bytes);
    if (window_.size() != before) {   // a probe starts or ends
        yield_.resize(max_io(), window_.size());
        if (arena_)
            arena_->set_limit(window_.size());
    }
    if (!judged)
        return;
    const auto& d = window_.last_decision();
    if (!d.measured)
        logger()->debug("{} '{}': keeps {} MiB in flight: {} MiB could not be measured, the copy was held back",
                        qapi::to_string(s_.type), job_->id(), d.from >> 20, d.tried >> 20);
    else if (d.to == d.from)
        logger()->debug("{} '{}': keeps {} MiB in flight: {} MiB gave {:.0f} MiB/s against {:.0f}",
                        qapi::to_string(s_.type), job_->id(), d.from >> 20, d.tried >> 20, mib(d.rate_tried),
                        mib(d.rate_before));
    else
        logger()->info("{} '{}': {} MiB in flight instead of {}: {:.0f} MiB/s against {:.0f}",
                       qapi::to_string(s_.type), job_->id(), d.to >> 20, d.from >> 20, mib(d.rate_tried),
                       mib(d.rate_before));
}

std::int64_t mirror_job::current_rate() const
{
    if (rate_window_start_ == std::chrono::steady_clock::time_point{})
        return 0;
    auto el = std::chrono::steady_clock::now() - rate_window_start_;
    if (el > std::chrono::seconds(2))
        return 0;   // idle for a while: nothing is being copied
    if (last_rate_ == 0 && el >= std::chrono::milliseconds(100))   // first second: partial window
        return static_cast<std::int64_t>(rate_window_bytes_ / std::chrono::duration<double>(el).count());
    return last_rate_;
}

void mirror_job::watch_convergence(job& j, std::uint64_t remaining)
{
    if (!first_pass_done_)
        return;
    const auto now = convergence_watch::clock::now();
    if (!watch_.sample(now, remaining))
        return;
    const auto secs = std::chrono::duration<double>(watch_.open_for(now)).count();
    const std::string reason =
        fmt::format("dirty bytes did not fall {:.0f}% below {} in {:.1f} s (now {}, copying {} B/s)",
                    watch_.settings().min_drop * 100, watch_.level(), secs, remaining, current_rate());
    auto_ = false;
    active_ = true;
    logger()->info("{} '{}': copy mode auto -> write-blocking: {}", qapi::to_string(s_.type), j.id(), reason);
    qapi::block_job_copy_mode_changed_data ev;
    ev.id = j.id();
    ev.type = s_.type;
    ev.copy_mode = qapi::mirror_copy_mode::write_blocking;
    ev.reason = reason;
    qapi::emit_block_job_copy_mode_changed(j.events(), ev);
}

void mirror_job::stop_cloning(const std::error_code& why)
{
    if (!clone_)
        return;
    clone_ = false;
    logger()->info("{} '{}': cannot share the source's extents with the target (reflink): {}; "
                   "reading and writing instead",
                   qapi::to_string(s_.type), job_->id(), strerror_text(why));
}

void mirror_job::handle_error(bool is_read, const std::error_code& ec)
{
    actively_synced_ = false;
    auto action = job_->error_action(is_read ? s_.on_source_error : s_.on_target_error, is_read, ec.value());
    if (action == qapi::block_error_action::report && !error_) {
        error_ = strerror_text(ec);
        bool posix = ec.category() == std::generic_category() || ec.category() == std::system_category();
        error_errno_ = posix ? ec.value() : 0;
    }
}

// ---- ops -------------------------------------------------------------------------------------

void mirror_job::bounce(target_request& req, std::span<const std::byte> data)
{
    // From a pool of the job's: an aligned allocation per 4 KiB guest write took a tenth of
    // the daemon's CPU once a mirror was READY. The copy goes back to the pool with its
    // request, which may end after the job (a force-cancel stops waiting for it).
    if (!bounce_pool_)
        bounce_pool_ = std::make_shared<io::buffer_pool>(forward_budget());
    req.pool = bounce_pool_;
    req.copy = bounce_pool_->get(data.size());
    std::memcpy(req.copy.data(), data.data(), data.size());
}

std::shared_ptr<target_request> mirror_job::make_request(op_kind kind, std::uint64_t offset, std::uint64_t length)
{
    auto req = std::make_shared<target_request>(ex_);
    req->target = s_.target;
    req->kind = kind;
    req->offset = offset;
    req->length = length;
    req->may_unmap = s_.unmap;
    return req;
}

asio::awaitable<void> mirror_job::perform(std::shared_ptr<target_request> req)
{
    // Touches only `req`, and its forwarder while that is set: the job may be gone when the
    // target answers.
    auto& t = *req->target;
    result<void> r;
    switch (req->kind) {
    case op_kind::copy:
        if (req->clone_from)
            r = co_await req->clone_from->clone_to(req->offset, req->length, t, req->offset);
        else
            r = co_await t.write(req->offset, std::span<const std::byte>(req->bytes(), req->length), req->fua);
        break;
    case op_kind::zero:
        r = co_await t.write_zeroes(req->offset, req->length, block::zero_flags{.may_unmap = req->may_unmap});
        break;
    case op_kind::discard:
        r = co_await t.discard(req->offset, req->length);
        break;
    case op_kind::flush:
        r = co_await t.flush();
        break;
    }
    req->outcome = r;
    req->done.notify_all();
    if (req->forwarder && req->source_done)
        req->forwarder->finish_forward(*req);
}

bool mirror_job::target_send(const std::shared_ptr<target_request>& req)
{
    if (force_cancelled_)
        return false;   // the target no longer matters: do not start anything
    requests_.push_back(req);
    // Ownership: the request coroutine shares `req` (node, buffer) and outlives the wait if a
    // force-cancel ends it; it never touches the job.
    asio::co_spawn(ex_, perform(req), log::on_failure("jobs", "mirror target request", spdlog::level::critical));
    return true;
}

asio::awaitable<std::optional<result<void>>> mirror_job::target_answer(std::shared_ptr<target_request> req)
{
    while (!req->outcome && !force_cancelled_)
        co_await req->done.wait();
    requests_.erase(std::find(requests_.begin(), requests_.end(), req));
    co_return req->outcome;
}

asio::awaitable<std::optional<result<void>>> mirror_job::target_io(std::shared_ptr<target_request> req)
{
    if (!target_send(req))
        co_return std::nullopt;
    co_return co_await target_answer(std::move(req));
}

void mirror_job::launch(op_kind kind, std::uint64_t offset, std::uint64_t length, std::shared_ptr<std::byte> piece)
{
    ++ops_;
    in_flight_bytes_ += length;
    window_.in_flight(copy_window::clock::now(), in_flight_bytes_);
    hold_chunks(offset, length, +1);
    // Ownership: the op coroutine uses `this`; run() waits for every op before it returns.
    asio::co_spawn(ex_, run_op(this, kind, offset, length, std::move(piece)),
                   log::on_failure("jobs", "mirror op", spdlog::level::critical));
}

asio::awaitable<void> mirror_job::run_op(mirror_job* self, op_kind kind, std::uint64_t offset, std::uint64_t length,
                                         std::shared_ptr<std::byte> piece)
{
    bool ok = false;
    try {
        result<void> r;
        bool read_failed = false;
        bool abandoned = false;
        auto req = self->make_request(kind, offset, length);
        bool copied = false;
        if (kind == op_kind::copy && self->clone_) {
            req->clone_from = self->s_.source;
            auto t = co_await self->target_io(req);
            abandoned = !t;
            if (t && !*t) {
                // Refused (EOPNOTSUPP, EXDEV, EINVAL) or failed: read and write from now on,
                // this piece too, so that a failing side is known and its error policy applies.
                self->stop_cloning(t->error());
                req = self->make_request(kind, offset, length);
            } else {
                copied = true;
                self->cloned_ += t ? length : 0;
            }
        }
        if (kind == op_kind::copy && !copied) {
            req->piece = piece;   // the request keeps it, should a force-cancel stop the wait
            r = co_await self->s_.source->read(offset, {piece.get(), length});
            read_failed = !r;
        }
        if (r && !copied) {
            auto t = co_await self->target_io(req);
            abandoned = !t;
            if (t)
                r = *t;
        }
        if (abandoned) {
            self->bitmap_.set(offset, length);   // force-cancelled: not known to be copied
        } else if (r) {
            ok = true;
            self->job_->progress_done(length);
            if (kind == op_kind::copy) {
                self->account_rate(length);
                self->size_window(length);
            } else {
                self->window_.interrupted();
            }
        } else {
            self->bitmap_.set(offset, length);
            self->handle_error(read_failed, r.error());
        }
    } catch (const std::exception& e) {
        logger()->error("{} '{}': op at {} threw: {}", qapi::to_string(self->s_.type), self->job_->id(), offset, e.what());
        self->bitmap_.set(offset, length);
        if (!self->error_)
            self->error_ = e.what();
    }
    (void)ok;
    piece.reset();
    self->hold_chunks(offset, length, -1);
    self->in_flight_bytes_ -= length;
    self->window_.in_flight(copy_window::clock::now(), self->in_flight_bytes_);
    --self->ops_;
    self->op_done_.notify_all();
}

asio::awaitable<void> mirror_job::wait_all_ops()
{
    while (ops_ > 0 || active_bytes_ > 0 || forward_bytes_ > 0)
        co_await wait_op();
}

// ---- initial bitmap (QEMU's block/mirror.c) --------------------------------------------------------------

asio::awaitable<void> mirror_job::init_bitmap()
{
    std::uint64_t size = s_.source->size();
    if (s_.sync == qapi::mirror_sync_mode::none)
        co_return;
    if (s_.sync == qapi::mirror_sync_mode::full && s_.zero_target) {
        // Pre-zeroing may leave clusters unallocated, which would show the backing file that
        // is attached at the end: copy everything (zeroes as data) instead.
        if (!s_.target->options().discard_unmap || s_.backing_pending()) {
            bitmap_.set(0, size);   // zero areas get written as write-zeroes by the loop
            co_return;
        }
        // Pre-zero the target cheaply, then copy only what the source has allocated.
        for (std::uint64_t off = 0; off < size && !job_->is_cancelled();) {
            std::uint64_t n = std::min<std::uint64_t>(size - off, std::uint64_t(1) << 30);
            auto req = make_request(op_kind::zero, off, n);
            req->may_unmap = true;
            auto r = co_await target_io(req);
            if (!r)
                co_return;   // force-cancelled
            if (!*r) {
                bitmap_.set(0, size);   // fall back to copying everything
                co_return;
            }
            off += n;
        }
    }
    if (s_.sync == qapi::mirror_sync_mode::top) {
        // What the images above the base hold: the source's own layer for a mirror, every
        // image down to the target for an active commit (QEMU's mirror_dirty_init, base_overlay).
        const block::node* base = s_.target_is_backing ? s_.target.get() : chain_next(*s_.source);
        for (std::uint64_t off = 0; off < size && !job_->is_cancelled();) {
            auto above = co_await allocated_between(s_.source.get(), base, off, size - off);
            if (!above) {
                bitmap_.set(off, size - off);
                co_return;
            }
            if (above->first)
                bitmap_.set(off, above->second);
            off += above->second;
            co_await job_->pause_point();
        }
        co_return;
    }
    for (std::uint64_t off = 0; off < size && !job_->is_cancelled();) {
        auto st = co_await s_.source->block_status(off, size - off);
        if (!st) {
            bitmap_.set(off, size - off);
            co_return;
        }
        unsigned f = st->flags;
        bool copy = (f & (block::status_allocated | block::status_data)) != 0 ||
                    !((f & block::status_zero) && s_.target->zero_init());
        // target-is-zero: what reads as zeroes on the source already does on the target.
        if (s_.target_is_zero)
            copy = (f & block::status_data) != 0 || !(f & block::status_zero);
        if (copy)
            bitmap_.set(off, st->length);
        off += st->length;
        co_await job_->pause_point();
    }
}

// ---- one iteration (QEMU's block/mirror.c) ---------------------------------------------------------------

asio::awaitable<void> mirror_job::iteration()
{
    auto first = bitmap_.next_dirty(cursor_);
    if (!first)
        co_return;
    if (*first < cursor_)
        first_pass_done_ = true;   // wrapped around: every chunk of the start was looked at
    std::uint64_t g = bitmap_.granularity();
    if (in_flight_[*first]) {
        cursor_ = *first + 1;   // look elsewhere next time
        // Busy with a background op or an active write: both notify op_done_ when they end.
        co_await wait_op();
        co_return;
    }
    // One request per iteration when throttled, so the bucket overshoots by one request at most.
    const auto now = guest_yield::clock::now();
    const std::uint64_t budget = yield_.budget(now);
    if (budget < window_.size() && now - yield_logged_ >= std::chrono::seconds(10)) {
        yield_logged_ = now;
        logger()->info("{} '{}': yielding to the source's guests: {} of {} bytes in flight (guest latency {} us, "
                       "{} us at best)",
                       qapi::to_string(s_.type), job_->id(), budget, window_.size(),
                       std::chrono::duration_cast<std::chrono::microseconds>(yield_.last()).count(),
                       std::chrono::duration_cast<std::chrono::microseconds>(yield_.base()).count());
    }
    std::uint64_t limit = limiter_.speed() > 0 ? max_io() : budget;
    limit = std::min(limit, budget - std::min(budget, in_flight_bytes_));
    std::uint64_t last = *first;
    std::uint64_t bytes = bitmap_.chunk_bytes(last);
    while (last + 1 < bitmap_.chunks() && bitmap_.test(last + 1) && !in_flight_[last + 1] &&
           bytes + bitmap_.chunk_bytes(last + 1) <= limit) {
        ++last;
        bytes += bitmap_.chunk_bytes(last);
    }
    cursor_ = last + 1;
    std::uint64_t offset = *first * g;
    std::uint64_t end = offset + bytes;
    // Clear before issuing: writes racing with the copy dirty the chunks again.
    bitmap_.reset(offset, bytes);
    hold_chunks(offset, bytes, +1);   // reservation while block_status runs
    for (std::uint64_t pos = offset; pos < end && !job_->is_cancelled();) {
        unsigned flags = block::status_data;
        std::uint64_t n = end - pos;
        if (auto st = co_await s_.source->block_status(pos, n))
            flags = st->flags, n = st->length;
        // A target whose backing is attached at completion copies zeroes as data: an
        // unallocated cluster would show the backing there afterwards.
        if (!(flags & block::status_data) && (flags & block::status_zero) && !s_.backing_pending()) {
            while (ops_ >= max_in_flight)
                co_await wait_op();
            launch(op_kind::zero, pos, n, nullptr);
            // Free only when the target can drop the range instead of writing zeroes (QEMU 7.2's mirror rate limit).
            if (!(s_.unmap && s_.target->options().discard_unmap))
                limiter_.charge(n);
            pos += n;
            continue;
        }
        for (std::uint64_t done = 0; done < n;) {
            std::shared_ptr<std::byte> piece;
            std::uint64_t len = 0;
            for (;;) {
                // Sized after each wait: the window, and with it the request size, may change.
                len = std::min(n - done, max_io());
                if (ops_ < max_in_flight && (piece = take_piece(len)))
                    break;
                co_await wait_op();
            }
            launch(op_kind::copy, pos + done, len, std::move(piece));
            limiter_.charge(len);
            done += len;
        }
        pos += n;
    }
    hold_chunks(offset, bytes, -1);
}

// ---- the loop --------------------------------------------------------------------------------

asio::awaitable<qapi::result<void>> mirror_job::run(job& j)
{
    assert(job_ == &j);
    if (s_.target_is_backing && s_.target->size() < s_.source->size()) {
        // Active commit into a smaller base: it grows to the top's size (QEMU's mirror_run).
        if (auto r = co_await s_.target->truncate(s_.source->size()); !r) {
            j.set_error_errno(r.error().value());
            co_return qapi::generic(strerror_text(r.error()));
        }
    }
    if (s_.source->size() != s_.target->size()) {
        j.set_error_errno(EINVAL);   // QEMU's mirror_run returns -EINVAL here too
        co_return qapi::generic("Source and target image have different sizes");
    }

    if (!(s_.resume && load_resume(j)))
        co_await init_bitmap();
    scan_done_ = !j.is_cancelled();
    forwarding_ = scan_done_;
    yield_logged_ = guest_yield::clock::now();   // the first line once the rule has settled
    bool converged = false;
    for (;;) {
        if (error_)
            break;
        if (j.should_pause()) {
            watch_.suspend();          // paused time is not time the copy fell behind
            co_await wait_all_ops();   // pause only once in-flight I/O has drained
        }
        co_await j.pause_point();
        if (j.is_cancelled())
            break;
        std::uint64_t dirty = bitmap_.dirty_bytes();
        const std::uint64_t remaining = in_flight_bytes_ + dirty + active_bytes_ + forward_bytes_;
        j.progress_set_remaining(remaining);
        if (dirty == 0)
            first_pass_done_ = true;
        if (auto_ && !active_ && !j.is_ready())
            watch_convergence(j, remaining);
        if (ops_ >= max_in_flight || (dirty == 0 && ops_ > 0) ||
            (ops_ > 0 && in_flight_bytes_ + s_.granularity > yield_.budget(guest_yield::clock::now()))) {
            co_await wait_op();
            continue;
        }
        if (dirty > 0) {
            if (auto d = limiter_.delay(); d.count() > 0) {
                co_await j.sleep(d);
                continue;
            }
            co_await iteration();
            continue;
        }
        // Active writes complete on both sides before the writer sees them: in write-blocking
        // mode they do not stand between the job and READY. Waiting for them to settle made a
        // busy source never converge (the bug QEMU fixed in "block/mirror: Do not wait for
        // active writes"). Left over from a switch to background mode, they are waited for.
        if (active_bytes_ > 0 && !active_) {
            co_await wait_op();
            continue;
        }
        // Nothing dirty, no background copy in flight.
        if (!j.is_ready()) {
            auto r = co_await target_io(make_request(op_kind::flush, 0, 0));
            if (!r)
                continue;   // force-cancelled
            if (!*r) {
                handle_error(false, r->error());
                continue;
            }
            if (bitmap_.dirty_bytes() == 0 && ops_ == 0 && (active_ || active_bytes_ == 0)) {
                j.progress_set_remaining(0);
                actively_synced_ = active_;
                j.transition_to_ready();
                poke_journal();   // a checkpoint with nothing left to copy
            }
            continue;
        }
        if (active_)
            actively_synced_ = true;
        if (should_complete_ || j.cancel_requested()) {
            // Converge: hold new requests on the source, let the ones in flight finish.
            co_await s_.filter->drain();
            while (forward_bytes_ > 0)   // writes already answered, still on their way to the target
                co_await wait_op();
            if (bitmap_.dirty_bytes() == 0 && ops_ == 0 && active_bytes_ == 0) {
                auto r = co_await target_io(make_request(op_kind::flush, 0, 0));
                if (r && *r && bitmap_.dirty_bytes() == 0) {
                    converged = true;
                    break;
                }
                if (r && !*r)
                    handle_error(false, r->error());
            }
            s_.filter->release(nullptr);
            continue;
        }
        co_await j.sleep(slice);   // on_write() wakes us earlier
    }
    forwarding_ = false;
    co_await wait_all_ops();
    if (cloned_ > 0)
        logger()->info("{} '{}': {} bytes copied by sharing the source's extents (reflink)", qapi::to_string(s_.type), j.id(),
                       cloned_);
    if (forwarded_writes_ > 0)
        logger()->info("{} '{}': {} writes ({} bytes) went on to the target as they were made", qapi::to_string(s_.type),
                       j.id(), forwarded_writes_, forwarded_total_);
    if (!converged)
        co_await s_.filter->drain();   // held until prepare/abort moves the filter out
    // The source stays drained until finalization: query shows paused (QEMU's job.c).
    j.pause();
    drain_paused_ = true;
    if (error_) {
        j.set_error_errno(error_errno_);
        co_return qapi::generic(*error_);
    }
    if (converged && s_.open_header_backing) {
        // mode=existing: the target's own backing chain, from its header, before the pivot
        // (QEMU opens it while finalizing; a failure there still pivots and fails the job,
        // here it fails the job with the source left in place).
        auto r = co_await s_.graph->open_backing_chain(*s_.target);
        if (!r) {
            logger()->warn("mirror '{}': cannot open the target's backing chain: {}", j.id(), r.error().desc);
            co_return r.error();
        }
    }
    if (converged)
        j.progress_set_remaining(0);
    co_return qapi::result<void>{};
}

bool mirror_job::load_resume(job& j)
{
    const mirror_resume& r = *s_.resume;
    if (r.granularity != bitmap_.granularity() || r.size != bitmap_.size() ||
        r.bitmap.size() != (bitmap_.chunks() + 7) / 8) {
        std::string why = fmt::format("full copy: the saved bitmap (granularity {}, size {}) does not fit the job "
                                      "(granularity {}, size {})",
                                      r.granularity, r.size, bitmap_.granularity(), bitmap_.size());
        logger()->warn("{} '{}': {}", qapi::to_string(s_.type), j.id(), why);
        j.set_restore_note(why);
        return false;
    }
    const std::uint64_t g = bitmap_.granularity();
    for (std::uint64_t c = 0; c < bitmap_.chunks(); ++c)
        if ((r.bitmap[c / 8] >> (c % 8)) & 1u)
            bitmap_.set(c * g, std::min(g, bitmap_.size() - c * g));
    j.progress_done(r.offset);
    j.progress_set_remaining(bitmap_.dirty_bytes());
    logger()->info("{} '{}': carrying on from saved progress: {} bytes done, {} left", qapi::to_string(s_.type),
                   j.id(), r.offset, bitmap_.dirty_bytes());
    return true;
}

asio::awaitable<qapi::result<mirror_progress>> mirror_job::save_progress(job& j)
{
    if (j.is_completed() || exited_ || j.cancel_requested())
        co_return qapi::generic("the job has already finished");
    // Park the job as a drain would: the loop waits for its requests before a pause point.
    j.pause();
    asio::steady_timer t(ex_);
    for (;;) {
        const bool parked = (j.status() == job_status::paused || j.status() == job_status::standby) && ops_ == 0 &&
                            active_bytes_ == 0 && forward_bytes_ == 0;
        if (parked || j.is_completed())
            break;
        t.expires_after(std::chrono::milliseconds(5));
        co_await t.async_wait(bjd::nothrow_awaitable);
    }
    if (j.is_completed())
        co_return qapi::generic("the job finished while it was being paused");
    if (!scan_done_)
        co_return qapi::generic("its initial scan of the source had not finished");
    if (auto r = co_await s_.target->flush(); !r)
        co_return qapi::generic("cannot flush the target: " + strerror_text(r.error()));
    co_return snapshot(j);   // parked: no copy in flight, so the bitmap alone says what is left
}

std::optional<block::dirty_bitmap_info> mirror_job::bitmap_info() const
{
    block::dirty_bitmap_info b;
    b.count = bitmap_.dirty_bytes();
    b.granularity = static_cast<std::uint32_t>(s_.granularity);
    return b;
}

void mirror_job::guest_io(std::chrono::nanoseconds latency)
{
    yield_.guest_io(guest_yield::clock::now(), latency);
}

void mirror_job::on_write(std::uint64_t offset, std::uint64_t length)
{
    // A write on its way to the target as well leaves nothing for the loop to do. Waking it
    // anyway cost a loop turn and a timer re-armed for every guest write once READY.
    if (std::find(active_ranges_.begin(), active_ranges_.end(), std::pair{offset, length}) != active_ranges_.end())
        return;
    bitmap_.set(offset, length);
    if (job_ && job_->sleeping_timed())
        job_->enter();
}

bool mirror_job::in_source_half(std::uint64_t offset, std::uint64_t length) const
{
    return std::any_of(active_ranges_.begin(), active_ranges_.end(), [&](const auto& r) {
        return offset < r.first + r.second && r.first < offset + length;
    });
}

asio::awaitable<void> mirror_job::settle(std::uint64_t offset, std::uint64_t length)
{
    // on_write() leaves the ranges of active_ranges_ clean: a write overlapping one of them
    // must not be taken for it, so it waits until that source write has returned.
    while (in_source_half(offset, length))
        co_await wait_op();
}

bool mirror_job::may_forward(std::uint64_t offset, std::uint64_t length)
{
    if (!forwarding_ || active_ || force_cancelled_ || error_ || !job_ || job_->should_pause() ||
        job_->is_cancelled())
        return false;
    if (length == 0 || length > max_io() || forward_bytes_ + length > forward_budget())
        return false;
    // `speed` limits what the job sends to the target, forwarded writes included.
    if (limiter_.speed() > 0 && limiter_.delay().count() > 0)
        return false;
    // A chunk still to be copied gets the source's data anyway; one being copied may be
    // written with older data after ours.
    if (chunks_busy(offset, length) || bitmap_.next_dirty_area(offset, offset + length))
        return false;
    // Part of a cluster written into a target whose backing appears only later would hide
    // that backing behind zeroes (whole clusters are copied then, mirror_start.cpp).
    const std::uint64_t cs = s_.target->cluster_size();
    const bool whole_clusters = cs == 0 || (offset % cs == 0 && length % cs == 0);
    return whole_clusters || !s_.backing_pending();
}

asio::awaitable<result<void>> mirror_job::background_write(block::node& src, std::uint64_t offset,
                                                           std::span<const std::byte> buf, bool fua)
{
    const std::uint64_t length = buf.size();
    if (in_source_half(offset, length))
        co_await settle(offset, length);
    if (!may_forward(offset, length))
        co_return co_await src.write(offset, buf, fua);
    // The target gets a copy of the write at the same time as the source, and the chunk stays
    // clean: a 4 KiB write costs the target 4 KiB, not a re-read and re-copy of its chunk
    // later. The writer is answered by the source alone, as in background mode.
    auto req = make_request(op_kind::copy, offset, length);
    bounce(*req, buf);   // the writer's buffer goes with the answer
    req->forwarder = this;
    if (!target_send(req))
        co_return co_await src.write(offset, buf, fua);
    limiter_.charge(length);
    hold_chunks(offset, length, +1);
    forward_bytes_ += length;
    job_->progress_increase_remaining(length);
    const std::pair range{offset, length};
    active_ranges_.push_back(range);
    auto r = co_await src.write(offset, buf, fua);
    active_ranges_.erase(std::find(active_ranges_.begin(), active_ranges_.end(), range));
    op_done_.notify_all();   // settle() waiters
    // Whichever half ends last settles the write: here, or perform() when the target answers.
    // No coroutine waits for the target on the job's side (the loop waits for forward_bytes_
    // to drop to 0 before run() returns), and a force-cancel settles what is left (cancel()).
    req->source_done = true;
    req->source_ok = bool(r);
    if (req->outcome || force_cancelled_)
        finish_forward(*req);
    co_return r;
}

void mirror_job::finish_forward(target_request& req)
{
    req.forwarder = nullptr;
    auto it = std::find_if(requests_.begin(), requests_.end(), [&](const auto& p) { return p.get() == &req; });
    if (it != requests_.end())
        requests_.erase(it);
    const std::uint64_t offset = req.offset, length = req.length;
    if (req.source_ok && req.outcome && *req.outcome) {
        ++forwarded_writes_;
        forwarded_total_ += length;
        job_->progress_done(length);
        account_rate(length);
    } else {
        // The background loop copies it again, and meets a target error under its own policy.
        bitmap_.set(offset, length);
        if (job_->sleeping_timed())
            job_->enter();
    }
    forward_bytes_ -= length;
    hold_chunks(offset, length, -1);
    op_done_.notify_all();
}

asio::awaitable<result<void>> mirror_job::active_write(block::node& src, op_kind kind, std::uint64_t offset,
                                                       std::span<const std::byte> buf, std::uint64_t length, bool fua,
                                                       bool may_unmap)
{
    // Wait for background ops on these chunks: one of them may have read older data.
    while (chunks_busy(offset, length))
        co_await wait_op();
    hold_chunks(offset, length, +1);
    active_bytes_ += length;
    const std::pair range{offset, length};
    active_ranges_.push_back(range);
    // The target's half goes out with the source's, not after it: the writer waits for the
    // slower of the two, not their sum (QEMU writes the source first, then the target).
    std::shared_ptr<target_request> req;
    if (active()) {
        req = make_request(kind, offset, length);
        req->fua = fua;
        req->may_unmap = may_unmap;
        // A force-cancel answers the writer before the target has the request, and the
        // writer's buffer is gone then.
        if (kind == op_kind::copy)
            bounce(*req, buf);
        if (!target_send(req))
            req.reset();
    }
    result<void> r;
    if (kind == op_kind::copy)
        r = co_await src.write(offset, buf, fua);
    else if (kind == op_kind::zero)
        r = co_await src.write_zeroes(offset, length, block::zero_flags{.may_unmap = may_unmap});
    else
        r = co_await src.discard(offset, length);
    active_ranges_.erase(std::find(active_ranges_.begin(), active_ranges_.end(), range));
    bool synced = false;
    if (req) {
        auto answer = co_await target_answer(req);
        if (!answer) {
            // Force-cancelled: the source has the data, the target no longer matters.
        } else if (!*answer) {
            handle_error(false, answer->error());
        } else if (r) {
            // Chunks fully written on both sides are in sync again, whatever the bitmap said
            // (initial sync included). Partial edge chunks stay for the background loop, and so
            // does a discarded range: its content is undefined on either side.
            if (kind != op_kind::discard)
                bitmap_.reset_covered(offset, length);
            synced = kind != op_kind::discard;
            job_->progress_done(length);
            if (kind == op_kind::copy)
                account_rate(length);
        }
    }
    if (!synced)
        bitmap_.set(offset, length);   // the background loop copies what did not reach both sides
    active_bytes_ -= length;
    hold_chunks(offset, length, -1);
    op_done_.notify_all();
    co_return r;
}

// ---- verbs -----------------------------------------------------------------------------------

qapi::result<void> mirror_job::complete(job& j)
{
    if (s_.replaces && !s_.graph->find(*s_.replaces))
        return qapi::generic("Node name '" + *s_.replaces + "' not found");
    should_complete_ = true;
    if (!j.paused())
        j.enter();
    return {};
}

bool mirror_job::cancel(job& j, bool force)
{
    // Before READY every cancel is a force cancel.
    bool effective = force || !j.is_ready();
    if (effective && !j.is_completed()) {
        // Stop waiting for the target (QEMU: bdrv_cancel_in_flight). Requests already sent
        // finish on their own; the source has everything its writers were answered for,
        // only the target is left as it happens to be, which a force-cancel allows.
        force_cancelled_ = true;
        // Forwarded writes whose source half is done are settled now; the others when their
        // writers return (background_write).
        auto pending = requests_;   // finish_forward() takes requests out
        for (const auto& r : pending) {
            r->done.notify_all();
            if (r->forwarder && r->source_done)
                finish_forward(*r);
        }
    }
    return effective;
}

void mirror_job::set_speed(job& j, std::int64_t speed)
{
    limiter_.set_speed(speed);
    if (j.sleeping_timed())
        j.enter();   // recompute the delay with the new limit now
}

qapi::result<void> mirror_job::change(job& j, const qapi::block_job_change_options& opts)
{
    if (opts.type != s_.type || !opts.u.mirror)
        return qapi::generic("Job type '" + std::string(qapi::to_string(opts.type)) + "' does not match the job's type '" +
                             std::string(qapi::to_string(s_.type)) + "'");
    const auto mode = opts.u.mirror->copy_mode;
    bool want = mode == qapi::mirror_copy_mode::write_blocking;
    if (want != active_ || (mode == qapi::mirror_copy_mode::auto_) != auto_)
        logger()->info("mirror '{}': copy mode -> {}", j.id(), std::string(qapi::to_string(mode)));
    // auto: background again, the stall rule judging from now on.
    if (mode == qapi::mirror_copy_mode::auto_ && !auto_)
        watch_.suspend();
    auto_ = mode == qapi::mirror_copy_mode::auto_;
    active_ = want;
    if (!want)
        actively_synced_ = false;
    return {};
}

void mirror_job::fill_info(const job&, qapi::block_job_info& info) const
{
    if (s_.type == job_type::mirror) {   // the only type with a copy mode
        info.actively_synced = actively_synced_ && active_;
        info.copy_mode = active_ ? qapi::mirror_copy_mode::write_blocking
                         : auto_ ? qapi::mirror_copy_mode::auto_
                                 : qapi::mirror_copy_mode::background;
    }
    info.dirty_bytes = static_cast<std::int64_t>(bitmap_.dirty_bytes());
    info.rate = current_rate();
    info.buf_size = static_cast<std::int64_t>(window_.size());
}

// ---- completion (QEMU's block/mirror.c) ------------------------------------------------------------------

qapi::result<void> mirror_job::exit_common(bool pivot)
{
    if (exited_)
        return {};
    exited_ = true;
    stop_journal();   // from here on the source is not the job's to track
    // The job no longer reads through the filter nor writes the target: drop what it took, so
    // that the graph change below is checked against the real users only (QEMU drops the
    // target's BlockBackend and the filter's permissions before it pivots). The filter's
    // other parents keep passing theirs to the source until they are back on it, so the
    // source's files are neither reopened nor unlocked in between.
    release_edges();
    // Everything happens without suspending: no request can slip in between, and the ones
    // the filter holds are released to `below`.
    qapi::result<void> outcome;
    std::shared_ptr<block::node> below = s_.source;
    remove_filter();
    if (pivot) {
        std::shared_ptr<block::node> replaced = s_.source;
        if (s_.replaces)
            replaced = s_.graph->find(*s_.replaces);
        qapi::result<void> r;
        if (replaced && replaced != s_.target)
            r = block::replace_node(*replaced, s_.target);   // every parent now uses the target
        if (r) {
            below = s_.target;
            if (replaced && replaced != s_.target)
                logger()->info("{} '{}': pivoted '{}' to '{}'", qapi::to_string(s_.type), job_ ? job_->id() : "", replaced->name(),
                               s_.target->name());
        } else {
            // QEMU 7.2 reports the reason and fails the job with EPERM; the source stays.
            logger()->error("{} '{}': cannot replace '{}' by '{}': {}", qapi::to_string(s_.type), job_ ? job_->id() : "",
                            replaced->name(), s_.target->name(), r.error().desc);
            outcome = qapi::generic(std::strerror(EPERM));
        }
    }
    release_filter(below);
    return outcome;
}

qapi::result<void> mirror_job::prepare(job& j)
{
    if (auto r = exit_common(should_complete_); !r)
        return r;
    // drive-mirror absolute-paths: the new image's backing (QEMU's block/mirror.c). After the pivot, so
    // that sync=none's backing edge to the source is not itself redirected to the target.
    if (s_.deferred_backing && !s_.target->backing()) {
        if (auto r = block::set_qcow2_backing(*s_.target, s_.deferred_backing); !r)
            logger()->warn("mirror '{}': cannot attach the target's backing: {}", j.id(), r.error().desc);
    }
    return {};
}

void mirror_job::abort(job& j)
{
    aborted_ = true;
    (void)exit_common(false);
}

void mirror_job::clean(job& j)
{
    (void)exit_common(false);
    s_.source->remove_write_observer(this);
    s_.source->set_blocker({});
    s_.target->set_blocker({});
    release_edges();
    if (drain_paused_) {
        drain_paused_ = false;
        j.resume();
    }
    // drive-mirror's target exists for the job only: without parents it goes away, with
    // everything the job opened below it (its file, a backing chain for mode=existing).
    if (s_.release_target && !s_.target->monitor_owned())
        s_.graph->close_later(ex_, s_.target);
    // Active commit: a base reopened for a job that failed or was cancelled before READY is
    // read-only again (QEMU's mirror_exit_common: abort && base_ro).
    if (s_.target_reopened && aborted_) {
        s_.target_reopened = false;
        restore_read_only(ex_, s_.target, std::string(qapi::to_string(s_.type)) + " '" + j.id() + "'");
    }
}

} // namespace bjd::jobs::detail
