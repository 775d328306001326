// SPDX-License-Identifier: MIT
// The io_uring backend: one ring per loop, completions through an eventfd the loop watches,
// one io_uring_submit per loop turn.
#include "engine_base.hpp"

#include "bjd/log.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/recycling_allocator.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

namespace bjd::io::detail {

namespace {

/// CQEs copied out per peek; the reaper loops until the CQ is empty.
constexpr unsigned reap_batch = 64;

/// Ring setups to try, best first. SINGLE_ISSUER (6.0) lets the kernel skip submission locking;
/// COOP_TASKRUN (5.19) avoids an IPI per completion, which is fine because the loop enters the
/// kernel (epoll_wait) every turn; SUBMIT_ALL (5.18) keeps submitting past a bad SQE so every
/// SQE gets its CQE. R_DISABLED defers choosing the single issuer to the first submission, since
/// make_engine may run on another thread than the loop. Kernels that lack a flag say EINVAL.
constexpr std::array<unsigned, 3> setup_attempts = {
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_R_DISABLED,
    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
    0,
};

/// Slots for registered ranges (engine::register_range): the kernel's table is made sparse
/// at setup, and filled and emptied one slot at a time. A default mirror takes 16, an NBD
/// main loop serving 1 MiB requests about as many as it has in flight.
constexpr unsigned fixed_slot_count = 256;

/// The engine's registered ranges, shared with the registered_range objects that hold them.
class fixed_table final : public detail::fixed_slots {
public:
    explicit fixed_table(io_uring* ring) : ring_(ring), ranges_(fixed_slot_count) {}

    /// The slot of a free entry, after registering `buf` in it; -1 when full or refused.
    int add(std::span<std::byte> buf)
    {
        auto it = std::find_if(ranges_.begin(), ranges_.end(), [](const range& r) { return r.len == 0; });
        if (!ring_ || it == ranges_.end() || buf.empty())
            return -1;
        const int slot = static_cast<int>(it - ranges_.begin());
        iovec iov{buf.data(), buf.size()};
        if (int r = io_uring_register_buffers_update_tag(ring_, slot, &iov, nullptr, 1); r < 0) {
            if (!refusal_logged_) {
                refusal_logged_ = true;
                log::get("io")->info("io_uring: registering a {}-byte buffer failed ({}); its requests pin pages "
                                     "as usual (RLIMIT_MEMLOCK bounds registered memory)",
                                     buf.size(), std::strerror(-r));
            }
            return -1;
        }
        *it = {reinterpret_cast<std::uintptr_t>(buf.data()), buf.size()};
        end_ = std::max(end_, static_cast<std::size_t>(slot) + 1);
        return slot;
    }

    void release(int slot) noexcept override
    {
        if (slot < 0 || static_cast<std::size_t>(slot) >= ranges_.size() || ranges_[slot].len == 0)
            return;
        ranges_[slot] = {};
        while (end_ > 0 && ranges_[end_ - 1].len == 0)
            --end_;
        if (!ring_)
            return;
        iovec iov{nullptr, 0};   // an empty entry; requests in flight keep the pages they use
        (void)io_uring_register_buffers_update_tag(ring_, static_cast<unsigned>(slot), &iov, nullptr, 1);
    }

    /// The slot whose range holds [addr, addr + len), or -1.
    int find(const void* addr, std::size_t len) const noexcept
    {
        // Slots are taken lowest first, so the scan stops at the last one in use: with nothing
        // registered, an NBD client's 4 KiB requests scan nothing.
        const auto a = reinterpret_cast<std::uintptr_t>(addr);
        for (std::size_t i = 0; i < end_; ++i)
            if (ranges_[i].len && a >= ranges_[i].addr && a + len <= ranges_[i].addr + ranges_[i].len)
                return static_cast<int>(i);
        return -1;
    }

    /// The ring is going away: registrations still held release nothing.
    void detach() noexcept { ring_ = nullptr; }

private:
    struct range {
        std::uintptr_t addr = 0;
        std::size_t len = 0;
    };
    io_uring* ring_;
    std::vector<range> ranges_;
    std::size_t end_ = 0;   ///< one past the highest slot in use
    bool refusal_logged_ = false;
};

/// One request between perform() and its CQE. It is the SQE's user_data.
struct op_base {
    /// Frees the op and, when `invoke`, dispatches its handler with `res`.
    void (*complete)(op_base* self, int res, bool invoke);
    raw_request req;
    op_base* next = nullptr; ///< queue of requests waiting for a free slot
};

/// The op for a concrete completion handler, allocated with the handler's allocator
/// (a per-thread recycling cache by default).
template <class Handler>
struct op final : op_base {
    using executor_type = asio::associated_executor_t<Handler, asio::io_context::executor_type>;
    using allocator_type = asio::associated_allocator_t<Handler, asio::recycling_allocator<void>>;
    using op_allocator = typename std::allocator_traits<allocator_type>::template rebind_alloc<op>;

    op(Handler&& h, const asio::io_context::executor_type& io_ex, const raw_request& r)
        : op_base{&do_complete, r}
        , handler_(std::move(h))
        , work_(asio::get_associated_executor(handler_, io_ex))
    {
    }

    static op* create(Handler&& h, const asio::io_context::executor_type& io_ex, const raw_request& r)
    {
        op_allocator alloc(asio::get_associated_allocator(h, asio::recycling_allocator<void>()));
        op* p = std::allocator_traits<op_allocator>::allocate(alloc, 1);
        try {
            return ::new (static_cast<void*>(p)) op(std::move(h), io_ex, r);
        } catch (...) {
            std::allocator_traits<op_allocator>::deallocate(alloc, p, 1);
            throw;
        }
    }

    static void do_complete(op_base* base, int res, bool invoke)
    {
        auto* self = static_cast<op*>(base);
        op_allocator alloc(asio::get_associated_allocator(self->handler_, asio::recycling_allocator<void>()));
        // Move the handler and the work guard out and free the op before running the handler,
        // so the handler may start the next request with this memory.
        Handler handler(std::move(self->handler_));
        asio::executor_work_guard<executor_type> work(std::move(self->work_));
        self->~op();
        std::allocator_traits<op_allocator>::deallocate(alloc, self, 1);
        if (invoke)
            asio::dispatch(work.get_executor(), asio::append(std::move(handler), res));
    }

    Handler handler_;
    asio::executor_work_guard<executor_type> work_; ///< keeps the handler's loop alive
};

class uring_engine final : public engine_base {
public:
    uring_engine(asio::io_context& ctx, unsigned depth)
        : engine_base(ctx)
        , efd_sd_(ctx)
        , depth_(depth)
    {
    }

    ~uring_engine() override;

    /// Sets up the ring and the eventfd. Returns 0 or a positive errno, with `what` naming
    /// the call that failed.
    int init(const char*& what);

    backend kind() const noexcept override { return backend::io_uring; }

    registered_range register_range(std::span<std::byte> buf) override
    {
        if (!fixed_)
            return {};
        const int slot = fixed_->add(buf);
        return slot < 0 ? registered_range{} : registered_range(fixed_, slot);
    }

protected:
    asio::awaitable<int> perform(raw_request r) override
    {
        return asio::async_initiate<const asio::use_awaitable_t<>&, void(int)>(
            [this](auto handler, const raw_request& req) {
                using handler_t = decltype(handler);
                start(op<handler_t>::create(std::move(handler), ctx_.get_executor(), req));
            },
            asio::use_awaitable, r);
    }

private:
    void start(op_base* o);
    bool try_prep(op_base* o);
    void prep(io_uring_sqe* sqe, op_base* o);
    void schedule_flush();
    void flush();
    bool submit_now();
    void arm();
    void on_ready(const boost::system::error_code& ec);
    void reap();
    void start_queued();

    io_uring ring_{};
    bool ring_ready_ = false;
    bool enabled_ = true;          ///< false while R_DISABLED is pending
    asio::posix::stream_descriptor efd_sd_;
    unsigned depth_;
    unsigned in_kernel_ = 0;        ///< SQEs prepared and not yet completed
    unsigned unsubmitted_ = 0;      ///< SQEs prepared and not yet submitted
    op_base* queue_head_ = nullptr; ///< requests waiting because depth_ are in the kernel
    op_base* queue_tail_ = nullptr;
    bool flush_posted_ = false;
    bool armed_ = false;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true); ///< for posted handlers
    std::shared_ptr<fixed_table> fixed_;   ///< null when the kernel has no sparse buffer table
};

int uring_engine::init(const char*& what)
{
    int ret = -EINVAL;
    for (unsigned flags : setup_attempts) {
        ret = io_uring_queue_init(depth_, &ring_, flags);
        if (ret == 0) {
            stats_.setup_flags = flags;
            enabled_ = !(flags & IORING_SETUP_R_DISABLED);
            break;
        }
        if (ret != -EINVAL)
            break;
    }
    if (ret < 0) {
        what = "io_uring_setup";
        return -ret;
    }
    ring_ready_ = true;
    // Registered buffers (5.19's sparse tables); without them every request pins its pages.
    if (int r = io_uring_register_buffers_sparse(&ring_, fixed_slot_count); r == 0)
        fixed_ = std::make_shared<fixed_table>(&ring_);
    else
        log::get("io")->debug("io_uring: no registered buffers: {}", std::strerror(-r));
    int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) {
        what = "eventfd";
        return errno;
    }
    efd_sd_.assign(efd); // owns efd from here on
    if (int r = io_uring_register_eventfd(&ring_, efd); r < 0) {
        what = "io_uring_register_eventfd";
        return -r;
    }
    return 0;
}

uring_engine::~uring_engine()
{
    *alive_ = false;
    boost::system::error_code ignored;
    efd_sd_.close(ignored); // a pending wait completes with operation_aborted and sees !alive
    if (fixed_)
        fixed_->detach();
    if (!ring_ready_)
        return;
    if (in_kernel_ > 0 || queue_head_) {
        // Misuse (destroyed without drain()): wait for the kernel to let go of the buffers,
        // then drop the handlers without running them.
        log::get("io")->error("io_uring engine destroyed with {} requests in flight; drain() first",
                              in_kernel_);
        if (unsubmitted_ > 0 && io_uring_submit(&ring_) < 0)
            in_kernel_ = 0; // cannot submit from here (another thread): leak rather than hang
        while (in_kernel_ > 0) {
            io_uring_cqe* cqe = nullptr;
            if (io_uring_wait_cqe(&ring_, &cqe) < 0)
                break;
            auto* o = reinterpret_cast<op_base*>(io_uring_cqe_get_data(cqe));
            io_uring_cqe_seen(&ring_, cqe);
            --in_kernel_;
            o->complete(o, 0, false);
        }
        while (op_base* o = queue_head_) {
            queue_head_ = o->next;
            o->complete(o, 0, false);
        }
    }
    io_uring_queue_exit(&ring_);
}

void uring_engine::prep(io_uring_sqe* sqe, op_base* o)
{
    const raw_request& r = o->req;
    switch (r.op) {
    case raw_request::opcode::read:
    case raw_request::opcode::write: {
        const bool is_read = r.op == raw_request::opcode::read;
        if (const int slot = fixed_ ? fixed_->find(r.addr, r.len) : -1; slot >= 0) {
            if (is_read)
                io_uring_prep_read_fixed(sqe, r.fd, r.addr, r.len, r.offset, slot);
            else
                io_uring_prep_write_fixed(sqe, r.fd, r.addr, r.len, r.offset, slot);
            ++stats_.fixed;
        } else if (is_read) {
            io_uring_prep_read(sqe, r.fd, r.addr, r.len, r.offset);
        } else {
            io_uring_prep_write(sqe, r.fd, r.addr, r.len, r.offset);
        }
        break;
    }
    case raw_request::opcode::fsync:
        io_uring_prep_fsync(sqe, r.fd, 0);
        break;
    case raw_request::opcode::fdatasync:
        io_uring_prep_fsync(sqe, r.fd, IORING_FSYNC_DATASYNC);
        break;
    case raw_request::opcode::fallocate:
        io_uring_prep_fallocate(sqe, r.fd, r.mode, static_cast<off_t>(r.offset), static_cast<off_t>(r.range));
        break;
    case raw_request::opcode::clone_range:
        // No io_uring opcode: engine_base sends these to perform_blocking, never here.
        assert(false);
        io_uring_prep_nop(sqe);
        break;
    }
    if (r.hint == io_hint::offload)
        io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
    io_uring_sqe_set_data(sqe, o); // ownership of *o passes to the kernel until its CQE
}

bool uring_engine::try_prep(op_base* o)
{
    if (in_kernel_ >= depth_)
        return false;
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe && submit_now()) // SQ full of unsubmitted entries: submit and try again
        sqe = io_uring_get_sqe(&ring_);
    if (!sqe)
        return false;
    prep(sqe, o);
    ++in_kernel_;
    ++unsubmitted_;
    ++stats_.sqes;
    schedule_flush();
    return true;
}

void uring_engine::start(op_base* o)
{
    if (queue_head_ == nullptr && try_prep(o))
        return;
    // Queue depth reached: wait for a CQE to free a slot (start_queued after reaping).
    o->next = nullptr;
    (queue_tail_ ? queue_tail_->next : queue_head_) = o;
    queue_tail_ = o;
    ++stats_.sq_waits;
}

void uring_engine::schedule_flush()
{
    if (flush_posted_)
        return;
    flush_posted_ = true;
    // Everything started during this loop turn goes to the kernel in one io_uring_enter.
    asio::post(ctx_, [this, alive = alive_] {
        if (*alive)
            flush();
    });
}

bool uring_engine::submit_now()
{
    if (unsubmitted_ == 0)
        return true;
    if (!enabled_) {
        // R_DISABLED: whoever enables the ring becomes its single issuer; this is the loop thread.
        ::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0);
        enabled_ = true;
    }
    ++stats_.submit_calls;
    int r = io_uring_submit(&ring_);
    if (r < 0) {
        if (r == -EAGAIN || r == -EBUSY || r == -EINTR || r == -ENOMEM)
            return false; // transient: the SQEs stay in the ring; flush again later
        // EEXIST (submitted from another thread than the loop), EBADF, …: a broken invariant.
        log::get("io")->critical("io_uring_submit failed: {}", std::strerror(-r));
        std::abort();
    }
    unsubmitted_ -= std::min<unsigned>(unsubmitted_, static_cast<unsigned>(r));
    return unsubmitted_ == 0;
}

void uring_engine::flush()
{
    flush_posted_ = false;
    if (!submit_now())
        schedule_flush();
    // Buffered reads that hit the page cache complete during submission: reap them now
    // rather than one epoll round trip later.
    reap();
    arm();
}

void uring_engine::arm()
{
    // Wait on the eventfd only while requests are in the kernel, so an idle engine does not
    // keep io_context::run() from returning (the awaiting handlers hold work guards).
    if (armed_ || in_kernel_ == 0)
        return;
    armed_ = true;
    efd_sd_.async_wait(asio::posix::stream_descriptor::wait_read,
                       [this, alive = alive_](const boost::system::error_code& ec) {
                           if (*alive)
                               on_ready(ec);
                       });
}

void uring_engine::on_ready(const boost::system::error_code& ec)
{
    armed_ = false;
    if (ec && ec != asio::error::operation_aborted)
        log::get("io")->error("io_uring eventfd wait failed: {}", ec.message());
    // Reset the counter before looking at the CQ: a CQE posted after this read signals again.
    std::uint64_t count = 0;
    [[maybe_unused]] ssize_t n = ::read(efd_sd_.native_handle(), &count, sizeof count);
    reap();
    arm();
}

void uring_engine::reap()
{
    std::array<io_uring_cqe*, reap_batch> cqes;
    std::array<std::pair<op_base*, int>, reap_batch> done;
    for (;;) {
        unsigned n = io_uring_peek_batch_cqe(&ring_, cqes.data(), reap_batch);
        if (n == 0)
            break;
        // Copy the results out and release the CQ slots before running any handler: a
        // handler may start new requests, and those must find room.
        for (unsigned i = 0; i < n; ++i)
            done[i] = {reinterpret_cast<op_base*>(io_uring_cqe_get_data(cqes[i])), cqes[i]->res};
        io_uring_cq_advance(&ring_, n);
        in_kernel_ -= n;
        start_queued();
        for (unsigned i = 0; i < n; ++i)
            done[i].first->complete(done[i].first, done[i].second, true); // exactly once
    }
}

void uring_engine::start_queued()
{
    while (queue_head_ && try_prep(queue_head_)) {
        queue_head_ = queue_head_->next;
        if (!queue_head_)
            queue_tail_ = nullptr;
    }
}

} // namespace

std::unique_ptr<engine> make_uring_engine(asio::io_context& ctx, const engine_options& opts,
                                          uring_setup_failure& failure)
{
    unsigned depth = std::clamp(opts.queue_depth, 1u, 4096u);
    auto e = std::make_unique<uring_engine>(ctx, depth);
    const char* what = "";
    if (int err = e->init(what); err != 0) {
        failure.error = err;
        failure.reason = std::string(what) == "io_uring_setup"
                             ? explain_uring_failure(err)
                             : std::string(what) + " failed: " + std::strerror(err);
        return nullptr;
    }
    return e;
}

} // namespace bjd::io::detail
