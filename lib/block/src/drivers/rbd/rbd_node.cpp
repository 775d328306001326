// SPDX-License-Identifier: MIT
// rbd: an image of a Ceph cluster through librbd, with QEMU 7.2's options and errors
// (block/rbd.c: qemu_rbd_connect, qemu_rbd_open, qemu_rbd_co_block_status, qemu_rbd_do_create).
//
// Threads. librbd's calls that wait on the network (connecting, opening, diff iteration,
// resize, create) run on the node's worker thread; the coroutine resumes on the loop it was
// awaited on. Data-path requests use librbd's asynchronous API, called on the loop itself
// (they only queue the request, see rbd_node::aio): the completion callback runs on a librbd
// thread, takes the result and hands the resumption to the loop through the node's
// completion queue (an eventfd), so node state is only touched on the loop.
// Every request holds the handles (`rbd_handles`) until its completion has run; closing waits
// for requests in flight before rbd_close.
#include "bjd/block/driver.hpp"

#include "bjd/block/query.hpp"
#include "bjd/crypto/objects.hpp"
#include "bjd/qapi/types.hpp"
#include "bjd/log.hpp"
#include "drivers/rbd/librbd_api.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>


#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <sys/eventfd.h>
#include <unistd.h>
#include <cstring>

namespace bjd::block {
namespace {

std::string errtext(int negerr) { return std::strerror(negerr < 0 ? -negerr : negerr); }

/// The cluster connection and the open image. Destroyed on the loop (or the caller's
/// thread), never on a librbd thread: requests hand their reference back to the loop.
struct rbd_handles {
    rados_t cluster = nullptr;
    rados_ioctx_t ioctx = nullptr;
    rbd_image_t image = nullptr;
    rbd_handles() = default;
    rbd_handles(const rbd_handles&) = delete;
    /// Runs once no request holds the handles any more: every AIO has completed.
    ~rbd_handles()
    {
        if (image)
            rbd_lib::get().rbd_close(image);
        if (ioctx)
            rbd_lib::get().rados_ioctx_destroy(ioctx);
        if (cluster)
            rbd_lib::get().rados_shutdown(cluster);
    }
};

/// Hands results from foreign threads (librbd's, the worker) to the loop. Those threads make
/// no Boost.Asio call at all: librbd is built with its own copy of Boost.Asio, whose inline
/// functions share thread-local state with ours by name (the thread's call stack and its
/// recycling allocator), so asio code of one running on a thread inside the other's
/// io_context::run corrupts memory. A mutex-guarded queue and an eventfd do it instead.
class completion_queue : public std::enable_shared_from_this<completion_queue> {
public:
    explicit completion_queue(asio::any_io_executor ex) : fd_(ex, ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

    /// Any thread: `f` runs on the loop. Only the push onto an empty queue signals the
    /// eventfd: the loop takes the whole queue under the lock after reading the eventfd, so
    /// a push that finds entries waiting is taken with them (one wakeup for a burst).
    ///
    /// The caller's reference travels with `f`, so a foreign thread never drops the last one:
    /// the queue's descriptor belongs to the loop's io_context and must be destroyed there
    /// (ASan caught a worker destroying it after a test's io_context was gone). The eventfd
    /// is written under the lock, and nothing here is touched once it is released: the loop,
    /// which takes the queue under the same lock, may free the queue at once.
    static void push(std::shared_ptr<completion_queue> self, std::function<void()> f)
    {
        completion_queue& q = *self;
        std::lock_guard lk(q.m_);
        const bool first = q.q_.empty();
        q.q_.push_back([keep = std::move(self), f = std::move(f)] { f(); });
        if (first) {
            const std::uint64_t one = 1;
            (void)!::write(q.fd_.native_handle(), &one, sizeof one);
        }
    }

    void start() { arm(); }
    void stop() { fd_.cancel(); }

private:
    void arm()
    {
        fd_.async_wait(asio::posix::stream_descriptor::wait_read,
                       [self = shared_from_this()](boost::system::error_code ec) {
                           if (ec)
                               return;
                           std::uint64_t v;
                           (void)!::read(self->fd_.native_handle(), &v, sizeof v);
                           std::vector<std::function<void()>> q;
                           {
                               std::lock_guard lk(self->m_);
                               q.swap(self->q_);
                           }
                           for (auto& f : q)
                               f();
                           self->arm();
                       });
    }

    asio::posix::stream_descriptor fd_;
    std::mutex m_;
    std::vector<std::function<void()>> q_;
};

/// Plain threads on which the librbd calls that wait are made: connecting, opening, diff
/// iteration, resize, close (and AIO submission for an image without rbd_non_blocking_aio,
/// see rbd_node::aio). They run no io_context
/// (see completion_queue) and never exit: librbd's thread-local destructors crash in a thread
/// that outlives a cluster connection it used (heap corruption in __call_tls_dtors), so the
/// threads are made once and kept for the life of the process, as QEMU's are.
class worker {
public:
    static worker& get()
    {
        static worker* w = new worker(1);   // never destroyed: see above
        return *w;
    }
    void submit(std::function<void()> f)
    {
        {
            std::lock_guard lk(m_);
            q_.push_back(std::move(f));
        }
        cv_.notify_one();
    }

private:
    explicit worker(unsigned n)
    {
        for (unsigned i = 0; i < n; ++i)
            std::thread([this] { run(); }).detach();
    }
    void run()
    {
        for (;;) {
            std::function<void()> f;
            {
                std::unique_lock lk(m_);
                cv_.wait(lk, [&] { return !q_.empty(); });
                f = std::move(q_.front());
                q_.pop_front();
            }
            f();
        }
    }

    std::mutex m_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> q_;
};

/// Runs `fn` on `w`'s thread and resumes on the loop through `cq`.
template <class R, class F>
asio::awaitable<R> off_loop(worker& w, const std::shared_ptr<completion_queue>& cq, const F& fn)
{
    // Named, not a temporary of the co_await expression: GCC 12 destroys captured copies of
    // temporaries in co_await/co_return expressions twice.
    auto init = [&w, &cq, &fn](auto handler) {
        auto hd = std::make_shared<asio::any_completion_handler<void(R)>>(std::move(handler));
        w.submit([hd, q = cq, fn]() mutable {
            auto r = std::make_shared<R>(fn());
            completion_queue::push(std::move(q), [hd, r]() mutable { std::move(*hd)(std::move(*r)); });
        });
    };
    R r = co_await asio::async_initiate<decltype(asio::use_awaitable), void(R)>(init, asio::use_awaitable);
    co_return r;
}

/// Drops `h` (the last reference: rbd_close, rados_shutdown) on a worker.
asio::awaitable<void> release_on(worker& w, const std::shared_ptr<completion_queue>& cq, std::shared_ptr<rbd_handles> h)
{
    auto holder = std::make_shared<std::shared_ptr<rbd_handles>>(std::move(h));
    auto fn = [holder] {
        holder->reset();
        return 0;
    };
    (void)co_await off_loop<int>(w, cq, fn);
}

/// A librbd AIO in flight: completed on a librbd thread, resumed on the loop.
struct aio_op {
    std::shared_ptr<completion_queue> cq;
    std::shared_ptr<asio::any_completion_handler<void(ssize_t)>> handler;

    static void done(rbd_completion_t c, void* arg)
    {
        std::unique_ptr<aio_op> op(static_cast<aio_op*>(arg));
        const ssize_t r = rbd_lib::get().rbd_aio_get_return_value(c);
        rbd_lib::get().rbd_aio_release(c);
        completion_queue::push(std::move(op->cq), [hd = op->handler, r]() mutable { std::move(*hd)(r); });
    }
};

}  // namespace

/// What an rbd node or blockdev-create needs to reach the cluster; see driver.hpp.
namespace {

qapi::result<void> set_opt(rados_t c, const char* key, const std::string& value)
{
    if (int r = rbd_lib::get().rados_conf_set(c, key, value.c_str()); r < 0)
        return qapi::generic(std::string("Could not set '") + key + "': " + errtext(r));
    return {};
}

/// QEMU's qemu_rbd_connect, on the worker thread. `cache`: rbd_cache (writeback) unless
/// cache.direct.
qapi::result<void> connect_blocking(rbd_handles& h, const rbd_open_options& o, bool cache)
{
    std::string mon_host;
    for (const auto& [host, port] : o.servers) {
        if (!mon_host.empty())
            mon_host += ';';
        mon_host += host.find(':') != std::string::npos ? "[" + host + "]:" + port : host + ":" + port;
    }
    if (int r = rbd_lib::get().rados_create(&h.cluster, o.user ? o.user->c_str() : nullptr); r < 0) {
        h.cluster = nullptr;
        return qapi::generic("error initializing: " + errtext(r));
    }
    // Without conf: Ceph's search path, whose absence is no error.
    int r = rbd_lib::get().rados_conf_read_file(h.cluster, o.conf ? o.conf->c_str() : nullptr);
    if (o.conf && r < 0)
        return qapi::generic("error reading conf file " + *o.conf + ": " + errtext(r));
    if (!mon_host.empty())
        if (auto s = set_opt(h.cluster, "mon_host", mon_host); !s)
            return s;
    if (o.key)
        if (auto s = set_opt(h.cluster, "key", *o.key); !s)
            return s;
    if (!o.auth_client_required.empty()) {
        std::string acr;
        for (const auto& m : o.auth_client_required)
            acr += (acr.empty() ? "" : ";") + m;
        if (auto s = set_opt(h.cluster, "auth_client_required", acr); !s)
            return s;
    }
    rbd_lib::get().rados_conf_set(h.cluster, "rbd_cache", cache ? "true" : "false");   // failure: no cache, as QEMU
    // librbd copies every write's buffer unless told not to; without the copy it keeps a
    // reference and delays the completion until it lets the buffer go. Every write here
    // waits for its completion before its buffer is reused or freed, so the copy is saved.
    // (Only with rbd_cache off: librbd's write-around cache, which acks writes before the
    // OSD does once flushed, turns zero-copy off for the image.)
    rbd_lib::get().rados_conf_set(h.cluster, "rbd_disable_zero_copy_writes", "false");
    if (r = rbd_lib::get().rados_connect(h.cluster); r < 0)
        return qapi::generic("error connecting: " + errtext(r));
    if (r = rbd_lib::get().rados_ioctx_create(h.cluster, o.pool.c_str(), &h.ioctx); r < 0) {
        h.ioctx = nullptr;
        return qapi::generic("error opening pool " + o.pool + ": " + errtext(r));
    }
    if (!o.ns.empty()) {
        bool exists = false;
        if (r = rbd_lib::get().rbd_namespace_exists(h.ioctx, o.ns.c_str(), &exists); r < 0)
            return qapi::generic("error checking namespace: " + errtext(r));
        if (!exists)
            return qapi::generic("namespace '" + o.ns + "' does not exist");
    }
    rbd_lib::get().rados_ioctx_set_namespace(h.ioctx, o.ns.c_str());
    return {};
}

struct image_facts {
    std::uint64_t size = 0;
    std::uint64_t obj_size = 0;
    bool nonblocking = true;   // rbd_non_blocking_aio as the image sees it
};

/// The image's effective rbd_non_blocking_aio (ceph.conf, pool or image override). Unknown:
/// false, the safe side (submissions then go through the worker).
bool nonblocking_aio(rbd_image_t image)
{
    int n = 0;
    if (rbd_lib::get().rbd_config_image_list(image, nullptr, &n) != -ERANGE || n <= 0)
        return false;
    std::vector<rbd_config_option_t> opts(static_cast<std::size_t>(n));
    if (rbd_lib::get().rbd_config_image_list(image, opts.data(), &n) < 0)
        return false;
    bool on = false;
    for (int i = 0; i < n; ++i)
        if (std::strcmp(opts[i].name, "rbd_non_blocking_aio") == 0)
            on = std::strcmp(opts[i].value, "true") == 0;
    rbd_lib::get().rbd_config_image_list_cleanup(opts.data(), n);
    return on;
}

class rbd_node final : public node {
public:
    rbd_node(node_options o, rbd_open_options ro, std::shared_ptr<rbd_handles> h,
             std::shared_ptr<completion_queue> cq, image_facts f)
        : node(std::move(o)), ro_(std::move(ro)), h_(std::move(h)), w_(&worker::get()), cq_(std::move(cq)),
          size_(f.size), obj_size_(f.obj_size), nonblocking_(f.nonblocking)
    {
    }
    ~rbd_node() override
    {
        // rbd_close (which waits for librbd's requests in flight), then the cluster, on a
        // worker; the loop waits for that, as QEMU's close does on its main loop.
        std::promise<void> closed;
        auto done = closed.get_future();
        w_->submit([h = std::move(h_), &closed]() mutable {
            h.reset();
            closed.set_value();
        });
        done.wait();
        cq_->stop();
    }

    std::string_view driver() const noexcept override { return "rbd"; }
    std::string filename() const override { return display_filename(*this); }   // always json:{…}
    std::optional<boost::json::object> json_options() const override { return ro_.shown; }
    std::uint64_t size() const noexcept override { return size_; }
    std::uint32_t cluster_size() const noexcept override { return static_cast<std::uint32_t>(obj_size_); }
    bool zero_init() const noexcept override { return true; }   // QEMU: bdrv_has_zero_init_1
    bool can_discard() const noexcept override { return true; }
    std::optional<std::string> cannot_resize() const override { return std::nullopt; }

protected:
    asio::awaitable<result<void>> do_read(std::uint64_t offset, std::span<std::byte> buf) override
    {
        auto r = co_await aio([&](rbd_completion_t c) {
            return rbd_lib::get().rbd_aio_read(h_->image, offset, buf.size(), reinterpret_cast<char*>(buf.data()), c);
        });
        if (r < 0)
            co_return errno_error(static_cast<int>(-r));
        if (static_cast<std::size_t>(r) < buf.size())   // zero-pad short reads
            std::memset(buf.data() + r, 0, buf.size() - static_cast<std::size_t>(r));
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) override
    {
        auto r = co_await aio([&](rbd_completion_t c) {
            return rbd_lib::get().rbd_aio_write(h_->image, offset, buf.size(), reinterpret_cast<const char*>(buf.data()), c);
        });
        if (r < 0)
            co_return errno_error(static_cast<int>(-r));
        if (fua)   // QEMU's rbd has no FUA: the block layer flushes after the write
            co_return co_await do_flush();
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t offset, std::uint64_t length, zero_flags flags) override
    {
        // Without MAY_UNMAP librbd writes zeroes (thick provisioning): no faster than the
        // caller's own fallback, so a request that must not fall back is refused, as in QEMU
        // 7.2. With MAY_UNMAP librbd discards whole objects and zeroes the rest in place: that
        // is the fast path, taken even under no_fallback, which the raw driver sets on every
        // request it passes down (else a mirror's zeroing through raw over rbd, libvirt's
        // layout, would write the whole image full of zero buffers).
        if (flags.no_fallback && !flags.may_unmap)
            co_return errno_error(ENOTSUP);
        const int zf = flags.may_unmap ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION;
        forget_data(offset, length);
        auto r = co_await aio(
            [&](rbd_completion_t c) { return rbd_lib::get().rbd_aio_write_zeroes(h_->image, offset, length, c, zf, 0); });
        forget_data(offset, length);   // and what a block-status answer in flight recorded
        co_return r < 0 ? result<void>(errno_error(static_cast<int>(-r))) : result<void>{};
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t offset, std::uint64_t length) override
    {
        forget_data(offset, length);
        auto r = co_await aio([&](rbd_completion_t c) { return rbd_lib::get().rbd_aio_discard(h_->image, offset, length, c); });
        forget_data(offset, length);
        co_return r < 0 ? result<void>(errno_error(static_cast<int>(-r))) : result<void>{};
    }
    asio::awaitable<result<void>> do_flush() override
    {
        auto r = co_await aio([&](rbd_completion_t c) { return rbd_lib::get().rbd_aio_flush(h_->image, c); });
        co_return r < 0 ? result<void>(errno_error(static_cast<int>(-r))) : result<void>{};
    }
    asio::awaitable<result<extent>> do_block_status(std::uint64_t offset, std::uint64_t length) override
    {
        if (auto known = known_data(offset, length))
            co_return *known;
        // One look at the object map answers this and, remembered, the block-status calls
        // on the objects ahead (a mirror asks once per request, in order): scan a window
        // of up to 1024 objects beyond what was asked.
        auto h = h_;
        const std::uint64_t window = std::min(size_ - offset, std::max(length, 1024 * obj_size_));
        auto fn = [h, offset, length, window] { return diff_status(*h, offset, length, window); };
        auto d = co_await off_loop<diff_result>(*w_, cq_, fn);
        for (const auto& [o, n] : d.data)
            remember_data(o, n);
        co_return d.answer;
    }
    asio::awaitable<result<void>> do_truncate(std::uint64_t size) override
    {
        auto h = h_;
        auto fn = [h, size] { return rbd_lib::get().rbd_resize(h->image, size); };
        data_objects_.clear();
        int r = co_await off_loop<int>(*w_, cq_, fn);
        data_objects_.clear();
        if (r < 0)
            co_return errno_error(-r);
        size_ = size;
        co_return result<void>{};
    }
    asio::awaitable<qapi::result<void>> do_resize(std::uint64_t size) override
    {
        auto r = co_await do_truncate(size);
        if (!r)
            co_return qapi::generic("failed to resize file: " + std::string(std::strerror(r.error().value())));
        co_return qapi::result<void>{};
    }

private:
    // Block status. QEMU asks librbd (rbd_diff_iterate2 over the object map) on every call,
    // which loads the object map from the OSD: a round trip on the worker per call, and a
    // mirror asks once per request it issues. Objects once reported as data are remembered
    // here and answered without asking again. That answer can only be stale in the safe
    // direction: an object this node discards or zeroes is forgotten, and one another client
    // removes meanwhile reads as zeroes that are reported as data, which every caller copies
    // as data (holes are always asked for again). Loop thread only.
    std::optional<extent> known_data(std::uint64_t offset, std::uint64_t length) const
    {
        if (data_objects_.empty())
            return std::nullopt;
        std::uint64_t o = offset / obj_size_;
        if (o >= data_objects_.size() || !data_objects_[o])
            return std::nullopt;
        while (o < data_objects_.size() && data_objects_[o] && o * obj_size_ < offset + length)
            ++o;
        const std::uint64_t end = std::min({o * obj_size_, offset + length, size_});
        return extent{status_data | status_allocated, end - offset};
    }
    void remember_data(std::uint64_t offset, std::uint64_t length)
    {
        if (length == 0 || obj_size_ == 0)
            return;
        const std::uint64_t last = (offset + length - 1) / obj_size_;
        if (data_objects_.size() <= last)
            data_objects_.resize(std::max<std::uint64_t>(last + 1, (size_ + obj_size_ - 1) / obj_size_));
        for (std::uint64_t o = offset / obj_size_; o <= last; ++o)
            data_objects_[o] = true;
    }
    void forget_data(std::uint64_t offset, std::uint64_t length)
    {
        if (length == 0 || data_objects_.empty())
            return;
        const std::uint64_t last = std::min<std::uint64_t>((offset + length - 1) / obj_size_, data_objects_.size());
        for (std::uint64_t o = offset / obj_size_; o < data_objects_.size() && o <= last; ++o)
            data_objects_[o] = false;
    }

    /// Starts one AIO with `start(completion)` and waits for its result (bytes or -errno).
    /// `start` runs before this returns; what it refers to stays alive. With librbd's
    /// rbd_non_blocking_aio (its default), the rbd_aio_* calls only queue the request to
    /// librbd's own work queue (its QueueImageDispatch layer, right after the API): QoS,
    /// the exclusive lock, the cache's and the objecter's throttles all wait there, not in the
    /// caller. So they are made right here on the loop, as QEMU makes them from its I/O thread;
    /// an image configured otherwise gets them made on the worker. (librbd's own Boost.Asio
    /// runs on this thread then: safe because the executable exports no asio statics, see
    /// local-symbols.map.)
    template <class Start>
    asio::awaitable<ssize_t> aio(Start start)
    {
        std::shared_ptr<completion_queue> cq = cq_;
        worker* w = nonblocking_ ? nullptr : w_;
        auto init = [w, &cq, &start](auto handler) {   // named: see off_loop
            auto hd = std::make_shared<asio::any_completion_handler<void(ssize_t)>>(std::move(handler));
            auto submit = [hd, q = cq, &start]() mutable {   // q moves on: see completion_queue::push
                auto* op = new aio_op{std::move(q), hd};
                rbd_completion_t c = nullptr;
                int r = rbd_lib::get().rbd_aio_create_completion(op, &aio_op::done, &c);
                if (r >= 0) {
                    r = start(c);
                    if (r < 0)
                        rbd_lib::get().rbd_aio_release(c);
                }
                if (r < 0) {   // failed early: no callback will come
                    auto back = std::move(op->cq);
                    delete op;
                    completion_queue::push(std::move(back),
                                           [hd, r]() mutable { std::move(*hd)(static_cast<ssize_t>(r)); });
                }
            };
            if (w)
                w->submit(std::move(submit));
            else
                submit();   // the handler runs later, from the completion queue
        };
        ssize_t r = co_await asio::async_initiate<decltype(asio::use_awaitable), void(ssize_t)>(init, asio::use_awaitable);
        co_return r;
    }

public:
    /// What one rbd_diff_iterate2 found: the answer for the range asked (QEMU 7.2's
    /// qemu_rbd_co_block_status: holes are known only through a valid fast-diff object map,
    /// otherwise everything is data) and every range found to be data in the whole window
    /// scanned, which starts at the same offset and may reach further.
    struct diff_result {
        extent answer;
        std::vector<std::pair<std::uint64_t, std::uint64_t>> data;   // offset, length; ascending
    };
    static diff_result diff_status(rbd_handles& h, std::uint64_t offset, std::uint64_t length, std::uint64_t window)
    {
        diff_result out;
        window = std::max(window, length);
        std::uint64_t features = 0, flags = 0;
        if (rbd_lib::get().rbd_get_features(h.image, &features) < 0 || !(features & RBD_FEATURE_FAST_DIFF) ||
            rbd_lib::get().rbd_get_flags(h.image, &flags) < 0 || (flags & RBD_FLAG_FAST_DIFF_INVALID)) {
            out.answer = extent{status_data | status_allocated, length};
            out.data.emplace_back(offset, window);
            return out;
        }
        // Whole objects, from the object map; adjacent data extents merged.
        auto cb = [](uint64_t offs, size_t len, int exists, void* arg) -> int {
            auto& runs = *static_cast<std::vector<std::pair<std::uint64_t, std::uint64_t>>*>(arg);
            if (!exists || len == 0)
                return 0;
            if (!runs.empty() && runs.back().first + runs.back().second == offs)
                runs.back().second += len;
            else
                runs.emplace_back(offs, len);
            return 0;
        };
        if (rbd_lib::get().rbd_diff_iterate2(h.image, nullptr, offset, window, 1, 1, cb, &out.data) < 0) {
            out.data.assign(1, {offset, length});
            out.answer = extent{status_data | status_allocated, length};
            return out;
        }
        // The first run at or after `offset` decides, as QEMU's early stop does.
        const std::uint64_t end = offset + length;
        out.answer = extent{status_zero, length};   // no data at all: a hole, as file's
        for (const auto& [o, n] : out.data) {
            if (o + n <= offset)
                continue;
            if (o <= offset)
                out.answer = extent{status_data | status_allocated, std::min(o + n, end) - offset};
            else if (o < end)
                out.answer = extent{status_zero, o - offset};
            break;
        }
        return out;
    }

private:
    rbd_open_options ro_;
    std::shared_ptr<rbd_handles> h_;
    worker* w_;
    std::shared_ptr<completion_queue> cq_;
    std::uint64_t size_;
    std::uint64_t obj_size_;
    bool nonblocking_;
    std::vector<bool> data_objects_;   // see known_data
};

}  // namespace

namespace {

std::shared_ptr<node> make_rbd_node(node_options common, rbd_open_options o, const std::shared_ptr<rbd_handles>& h,
                                    const std::shared_ptr<completion_queue>& cq, image_facts f)
{
    return std::make_shared<rbd_node>(std::move(common), std::move(o), h, cq, f);
}

std::string base64(std::string_view in)
{
    static constexpr char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        const unsigned v = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8 | (unsigned char)in[i + 2];
        out += {tab[v >> 18], tab[v >> 12 & 63], tab[v >> 6 & 63], tab[v & 63]};
    }
    if (i + 1 == in.size()) {
        const unsigned v = (unsigned char)in[i] << 16;
        out += {tab[v >> 18], tab[v >> 12 & 63], '=', '='};
    } else if (i + 2 == in.size()) {
        const unsigned v = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8;
        out += {tab[v >> 18], tab[v >> 12 & 63], tab[v >> 6 & 63], '='};
    }
    return out;
}

/// QEMU's qcrypto_secret_lookup.
qapi::result<std::string> lookup_secret(const crypto::registry* objects, const std::string& id)
{
    auto obj = objects ? objects->find(id) : nullptr;
    if (!obj)
        return qapi::generic("No secret with id '" + id + "'");
    if (obj->kind() != crypto::object_kind::secret)
        return qapi::generic("Object with id '" + id + "' is not a secret");
    return static_cast<const crypto::secret&>(*obj).value();
}

} // namespace

qapi::result<rbd_open_options> rbd_options(const qapi::blockdev_options_rbd& q, const crypto::registry* objects)
{
    rbd_open_options o;
    o.pool = q.pool;
    o.ns = q.namespace_.value_or("");
    o.image = q.image;
    o.snapshot = q.snapshot.value_or("");
    o.conf = q.conf;
    o.user = q.user;
    if (q.key_secret) {
        auto k = lookup_secret(objects, *q.key_secret);
        if (!k)
            return k.error();
        o.key = base64(*k);   // QEMU's qcrypto_secret_lookup_as_base64
    }
    for (auto m : q.auth_client_required.value_or(std::vector<qapi::rbd_auth_mode>{}))
        o.auth_client_required.emplace_back(qapi::to_string(m));
    for (const auto& s : q.server.value_or(std::vector<qapi::inet_socket_address_base>{}))
        o.servers.emplace_back(s.host, s.port);
    if (q.encrypt) {
        // QEMU looks the passphrase up when it loads the encryption; blockjobd has none to load.
        if (auto k = lookup_secret(objects, q.encrypt->key_secret); !k)
            return k.error();
        return qapi::generic("RBD image encryption is not supported by blockjobd's rbd driver");
    }
    // QEMU's strong runtime options, which its json:{…} filename shows.
    o.shown = {{"driver", "rbd"}, {"pool", q.pool}, {"image", q.image}};
    if (q.namespace_)
        o.shown["namespace"] = *q.namespace_;
    if (q.conf)
        o.shown["conf"] = *q.conf;
    if (q.snapshot)
        o.shown["snapshot"] = *q.snapshot;
    if (q.user)
        o.shown["user"] = *q.user;
    if (q.server) {
        boost::json::array a;
        for (const auto& s : *q.server)
            a.push_back(boost::json::object{{"host", s.host}, {"port", s.port}});
        o.shown["server"] = std::move(a);
    }
    return o;
}

asio::awaitable<qapi::result<std::shared_ptr<node>>> open_rbd(node_options common, rbd_open_options o)
{
    if (auto lib = rbd_lib::load(); !lib)
        co_return lib.error();
    worker* w = &worker::get();
    auto h = std::make_shared<rbd_handles>();
    auto cq = std::make_shared<completion_queue>(co_await asio::this_coro::executor);
    cq->start();
    const bool cache = !common.cache_direct;
    struct opened {
        qapi::result<void> r;
        image_facts f;
    };
    // A plain pointer: the handles are let go on the worker (release_on), not with the lambda.
    auto open_fn = [hp = h.get(), &o, cache]() -> opened {
        rbd_handles* h = hp;
        opened out;
        out.r = connect_blocking(*h, o, cache);
        if (!out.r)
            return out;
        const char* snap = o.snapshot.empty() ? nullptr : o.snapshot.c_str();
        if (int r = rbd_lib::get().rbd_open(h->ioctx, o.image.c_str(), &h->image, snap); r < 0) {
            h->image = nullptr;
            out.r = qapi::generic("error reading header from " + o.image + ": " + errtext(r));
            return out;
        }
        rbd_image_info_t info{};
        if (int r = rbd_lib::get().rbd_stat(h->image, &info, sizeof info); r < 0) {
            out.r = qapi::generic("error getting image info from " + o.image + ": " + errtext(r));
            return out;
        }
        out.f.size = info.size;
        out.f.obj_size = info.obj_size;
        out.f.nonblocking = nonblocking_aio(h->image);
        return out;
    };
    auto res = co_await off_loop<opened>(*w, cq, open_fn);
    if (!res.r) {
        // Tear down on the worker: rbd_close and rados_shutdown wait on the network.
        co_await release_on(*w, cq, std::move(h));
        cq->stop();
        co_return res.r.error();
    }
    if (!o.snapshot.empty() && !common.read_only) {   // QEMU's bdrv_apply_auto_read_only
        if (!common.auto_read_only) {
            co_await release_on(*w, cq, std::move(h));
            cq->stop();
            co_return qapi::generic("rbd snapshots are read-only");
        }
        common.read_only = true;
    }
    // Made in a statement of its own, outside co_return: GCC 12 loses a reference when the
    // by-value arguments of a call are built inside a co_return expression.
    std::shared_ptr<node> n = make_rbd_node(std::move(common), std::move(o), h, cq, res.f);
    co_return n;
}

asio::awaitable<qapi::result<void>> create_rbd(const rbd_open_options& where, std::uint64_t size,
                                               std::uint64_t object_size)
{
    if (!where.snapshot.empty())
        co_return qapi::generic("Can't use snapshot name for image creation");
    if (auto lib = rbd_lib::load(); !lib)
        co_return lib.error();
    int order = 0;
    if (object_size) {
        if ((object_size - 1) & object_size)
            co_return qapi::generic("obj size needs to be power of 2");
        if (object_size < 4096)
            co_return qapi::generic("obj size too small");
        order = __builtin_ctzll(object_size);
    }
    worker& w = worker::get();
    auto h = std::make_shared<rbd_handles>();
    auto cq = std::make_shared<completion_queue>(co_await asio::this_coro::executor);
    cq->start();
    auto create_fn = [hp = h.get(), &where, size, order]() -> qapi::result<void> {
        rbd_handles* h = hp;
        if (auto c = connect_blocking(*h, where, false); !c)
            return c;
        int ord = order;
        if (int e = rbd_lib::get().rbd_create(h->ioctx, where.image.c_str(), size, &ord); e < 0)
            return qapi::generic("error rbd create: " + errtext(e));
        return {};
    };
    auto r = co_await off_loop<qapi::result<void>>(w, cq, create_fn);
    co_await release_on(w, cq, std::move(h));
    cq->stop();
    co_return r;
}

} // namespace bjd::block
