// SPDX-License-Identifier: MIT
#include "bjd/block/node.hpp"

#include "bjd/block/bitmaps.hpp"

#include "bjd/io/buffer.hpp"
#include "bjd/io/engine.hpp"
#include "bjd/log.hpp"

#include <boost/container/small_vector.hpp>

#include <algorithm>
#include <array>
#include <cassert>
#include <cstring>
#include <optional>
#include <utility>

namespace bjd::block {

namespace {

bool is_all_zero(std::span<const std::byte> buf)
{
    // Compare word-wise against the first byte, then check that byte: the libc memcmp is vectorised.
    return !buf.empty() && buf[0] == std::byte{0} && std::memcmp(buf.data(), buf.data() + 1, buf.size() - 1) == 0;
}

// Write thresholds see the ranges QEMU 7.2's bdrv_co_write_req_prepare sees (block/io.c), so
// that amount-exceeded matches qemu-storage-daemon's on O_DIRECT files too.

/// The end of a write as prepared: padded to `align` (bdrv_pad_request); none for an
/// unaligned zero-length write, which bdrv_co_pwritev_part drops.
std::optional<std::uint64_t> padded_write_end(std::uint64_t offset, std::uint64_t length, std::uint64_t align)
{
    if (length == 0)
        return offset % align ? std::nullopt : std::optional<std::uint64_t>(offset);
    return (offset + length + align - 1) / align * align;
}

/// The ends of the pieces a write-zeroes is prepared as, in order (bdrv_co_do_zero_pwritev):
/// the padded head block (or the whole padded range when it fits in the padding buffer), the
/// aligned middle, the padded tail block. Zero-length: no piece.
struct zero_pieces {
    std::array<std::uint64_t, 3> end{};
    unsigned count = 0;
    void add(std::uint64_t e) { end[count++] = e; }
};

zero_pieces zero_write_ends(std::uint64_t offset, std::uint64_t length, std::uint64_t align)
{
    zero_pieces p;
    if (length == 0)
        return p;
    const std::uint64_t head = offset % align;
    const std::uint64_t tail = (offset + length) % align ? align - (offset + length) % align : 0;
    if (head == 0 && tail == 0) {
        p.add(offset + length);
        return p;
    }
    const std::uint64_t sum = head + length + tail;
    const std::uint64_t buf_len = sum > align && head && tail ? 2 * align : align;
    if (sum == buf_len) {   // pad.merge_reads: one padded write does it all
        p.add(offset - head + sum);
        return p;
    }
    if (head) {
        p.add(offset - head + align);
        length -= align - head;
        offset += align - head;
    }
    if (length >= align) {
        offset += length / align * align;
        length %= align;
        p.add(offset);
    }
    if (length)
        p.add(offset + align);
    return p;
}

} // namespace

// ---- node -------------------------------------------------------------------------------------

node::node(node_options opts) : opts_(std::move(opts)) {}

node::node(std::string name, bool read_only) : opts_{.name = std::move(name), .read_only = read_only} {}

node::~node()
{
    // Children edges detach in their destructors; parents must be gone already, since every
    // edge keeps its node alive.
    assert(parents_.empty());
}

std::string node::filename() const
{
    if (node* c = primary_child())
        return c->filename();
    return {};
}

node* node::child(std::string_view role) const noexcept
{
    for (const auto& e : children_)
        if (e->role() == role)
            return e->get();
    return nullptr;
}

node* node::primary_child() const noexcept { return child("file"); }

edge& node::add_child(std::string role, std::shared_ptr<node> n)
{
    auto e = std::make_unique<edge>(parent_kind::node, "node '" + opts_.name + "'", std::move(role));
    e->parent_node_ = this;
    (void)e->attach(std::move(n));   // takes nothing yet: cannot conflict (refresh_permissions)
    children_.push_back(std::move(e));
    return *children_.back();
}

void node::remove_child(std::string_view role)
{
    children_.erase(std::remove_if(children_.begin(), children_.end(),
                                   [&](const std::unique_ptr<edge>& e) { return e->role() == role; }),
                    children_.end());
}

void node::add_write_observer(write_observer* o) { observers_.push_back(o); }

namespace {

/// QEMU's bdrv_get_device_or_node_name: the drive whose medium `n` is, else its node name.
std::string device_or_node_name(const node& n)
{
    auto d = n.device_name();
    return d.empty() ? n.name() : d;
}

} // namespace

std::string node::device_name() const
{
    for (const edge* e : parents()) {
        // A drive's edge is owned by "block device 'NAME'" (backend.cpp).
        const std::string& o = e->owner();
        if (e->kind() == parent_kind::backend && o.size() > 2 && o.back() == '\'')
            if (auto q = o.find('\''); q != o.size() - 1)
                return o.substr(q + 1, o.size() - q - 2);
    }
    return {};
}

void node::check_unused()
{
    if (parents_.empty() && unused_hook_)
        unused_hook_(*this);
}

std::string node::op_blocker(block_op op) const
{
    if (!blocker_.empty())
        return blocker_;
    if (op != block_op::other)
        return {};
    // Filters hold their child as "backing" too, but only a COW parent blocks it.
    for (const edge* e : parents_)
        if (e->role() == "backing")
            if (const node* p = e->parent_node(); p && !p->is_filter())
                return "node is used as backing hd of '" + device_or_node_name(*p) + "'";
    return {};
}

qapi::result<void> node::check_op(block_op op, std::string_view shown) const
{
    std::string why = op_blocker(op);
    if (why.empty())
        return {};
    return qapi::generic("Node '" + std::string(shown.empty() ? std::string_view(name()) : shown) + "' is busy: " + why);
}

std::vector<dirty_bitmap_info> node::dirty_bitmaps() const
{
    std::vector<dirty_bitmap_info> out;
    for (auto it = observers_.rbegin(); it != observers_.rend(); ++it)
        if (auto b = (*it)->bitmap_info())
            out.push_back(std::move(*b));
    return out;
}

void node::remove_write_observer(write_observer* o)
{
    observers_.erase(std::remove(observers_.begin(), observers_.end(), o), observers_.end());
}

std::shared_ptr<named_bitmap> node::find_bitmap(std::string_view name) const
{
    for (const auto& b : bitmaps_)
        if (b->name() == name)
            return b;
    return nullptr;
}

std::shared_ptr<named_bitmap> node::add_bitmap(std::string name, std::uint64_t granularity)
{
    auto b = std::make_shared<named_bitmap>(std::move(name), size(), granularity);
    bitmaps_.push_back(b);
    add_write_observer(b.get());
    return b;
}

void node::remove_bitmap(const named_bitmap& b)
{
    auto it = std::find_if(bitmaps_.begin(), bitmaps_.end(), [&](const auto& p) { return p.get() == &b; });
    if (it == bitmaps_.end())
        return;
    remove_write_observer(it->get());
    bitmaps_.erase(it);
}

std::uint64_t node::default_bitmap_granularity() const noexcept
{
    const std::uint64_t c = cluster_size();
    return c ? std::clamp<std::uint64_t>(c, 4096, 65536) : 65536;
}

void node::set_write_threshold(std::uint64_t threshold, write_threshold_hook hook)
{
    threshold_ = threshold;
    threshold_hook_ = threshold ? std::move(hook) : write_threshold_hook{};
}

void node::check_write_threshold(std::uint64_t end)
{
    if (threshold_ == 0 || end <= threshold_)
        return;
    // Disarmed before anyone hears of it, as QEMU does "to avoid flooding the monitor"; the
    // hook may arm it again.
    const std::uint64_t threshold = std::exchange(threshold_, 0);
    auto hook = std::exchange(threshold_hook_, {});
    if (hook)
        hook(*this, end - threshold, threshold);
}

result<void> node::check_request(std::uint64_t offset, std::uint64_t length, bool is_write) const
{
    if (is_write && opts_.read_only)
        return errno_error(EPERM);
    std::uint64_t sz = size();
    if (offset > sz || length > sz - offset)
        return errno_error(EINVAL);
    return {};
}

void node::notify_write(std::uint64_t offset, std::uint64_t length)
{
    unflushed_ = true;
    wr_highest_offset_ = std::max(wr_highest_offset_, offset + length);
    acct_.note_write_end(offset + length);
    // Copy: an observer may detach itself (a job finishing) while being told. The usual few
    // stay on the stack: this runs for every write.
    const boost::container::small_vector<write_observer*, 4> obs(observers_.begin(), observers_.end());
    for (write_observer* o : obs)
        o->on_write(offset, length);
}

node::intent_scope::intent_scope(node& n, std::uint64_t offset, std::uint64_t length)
    : hook(n.intent_hook_), n_(n), offset_(offset), length_(length)
{
    ++n_.writes_in_flight_;
    must_wait = hook && !hook->enter(offset, length);
}

node::intent_scope::~intent_scope()
{
    if (hook)
        hook->leave(offset_, length_);
    --n_.writes_in_flight_;
}

asio::awaitable<result<void>> node::read(std::uint64_t offset, std::span<std::byte> buf)
{
    if (auto r = check_request(offset, buf.size(), false); !r) {
        acct_.invalid(stats::op::read);
        co_return r;
    }
    auto ck = acct_.start(stats::op::read, buf.size());
    result<void> r;
    if (!buf.empty())
        r = co_await do_read(offset, buf);
    acct_.finish(ck, bool(r));
    co_return r;
}

// Not coroutines: write_request's awaitable is theirs, without a frame of their own (an
// allocation per request at every layer of a chain).
asio::awaitable<result<void>> node::write(std::uint64_t offset, std::span<const std::byte> buf, bool fua)
{
    return write_request(offset, buf, fua, false);
}

asio::awaitable<result<void>> node::write_compressed(std::uint64_t offset, std::span<const std::byte> buf)
{
    return write_request(offset, buf, false, true);
}

asio::awaitable<result<void>> node::do_write_compressed(std::uint64_t, std::span<const std::byte>)
{
    co_return errno_error(ENOTSUP);
}

namespace {

/// A clone the kernel would not do (io::clone_refused), or that this node cannot take
/// (ENOTSUP): nothing happened, the caller reads and writes instead, and the statistics do
/// not count it as a failed request.
bool clone_refused(const result<void>& r) noexcept
{
    return !r && io::clone_refused(r.error());
}

} // namespace

asio::awaitable<result<void>> node::clone_to(std::uint64_t offset, std::uint64_t length, node& target,
                                            std::uint64_t target_offset)
{
    if (!can_clone() || !target.can_clone())
        co_return errno_error(ENOTSUP);
    if (auto r = check_request(offset, length, false); !r) {
        acct_.invalid(stats::op::read);
        co_return r;
    }
    auto ck = acct_.start(stats::op::read, length);
    result<void> r;
    if (length > 0)
        r = co_await do_clone_to(offset, length, target, target_offset);
    if (!clone_refused(r))
        acct_.finish(ck, bool(r));
    co_return r;
}

asio::awaitable<result<void>> node::clone_from(std::uint64_t offset, std::uint64_t length, const clone_source& src)
{
    if (!can_clone() || opts_.zeroes != node_options::detect_zeroes::off)
        co_return errno_error(ENOTSUP);
    if (auto r = check_request(offset, length, true); !r) {
        acct_.invalid(stats::op::write);
        co_return r;
    }
    if (auto end = padded_write_end(offset, length, write_padding()))
        check_write_threshold(*end);
    auto ck = acct_.start(stats::op::write, length);
    if (length == 0) {
        acct_.finish(ck, true);
        co_return result<void>{};
    }
    auto self = shared_from_this();   // observers run after the request, even if the graph changed
    intent_scope intent(*this, offset, length);
    if (intent.must_wait)
        co_await intent.hook->wait(offset, length);
    auto r = co_await do_clone_from(offset, length, src);
    if (!clone_refused(r)) {
        notify_write(offset, length);
        acct_.finish(ck, bool(r));
    }
    co_return r;
}

asio::awaitable<result<void>> node::do_clone_to(std::uint64_t, std::uint64_t, node&, std::uint64_t)
{
    co_return errno_error(ENOTSUP);
}

asio::awaitable<result<void>> node::do_clone_from(std::uint64_t, std::uint64_t, const clone_source&)
{
    co_return errno_error(ENOTSUP);
}

asio::awaitable<result<void>> node::write_request(std::uint64_t offset, std::span<const std::byte> buf, bool fua,
                                                  bool compressed)
{
    auto r0 = check_request(offset, buf.size(), true);
    if (r0 && compressed) {
        // qcow2_co_pwritev_compressed_part's rule: whole clusters, the last one may end the node.
        const std::uint64_t cs = cluster_size();
        if (!supports_compressed_writes())
            r0 = errno_error(ENOTSUP);
        else if (cs == 0 || offset % cs != 0 || (buf.size() % cs != 0 && offset + buf.size() != size()))
            r0 = errno_error(EINVAL);
    }
    if (!r0) {
        acct_.invalid(stats::op::write);
        co_return r0;
    }
    if (auto end = padded_write_end(offset, buf.size(), write_padding()))
        check_write_threshold(*end);
    auto ck = acct_.start(stats::op::write, buf.size());
    if (buf.empty()) {
        acct_.done(ck);
        co_return result<void>{};
    }
    auto self = shared_from_this();   // observers run after the request, even if the graph changed
    intent_scope intent(*this, offset, buf.size());
    if (intent.must_wait)
        co_await intent.hook->wait(offset, buf.size());
    result<void> r;
    if (opts_.zeroes != node_options::detect_zeroes::off && is_all_zero(buf)) {
        zero_flags zf{.may_unmap = opts_.zeroes == node_options::detect_zeroes::unmap && opts_.discard_unmap};
        r = co_await do_write_zeroes(offset, buf.size(), zf);
        if (!r && r.error() == std::errc::operation_not_supported) {
            if (compressed)
                r = co_await do_write_compressed(offset, buf);
            else
                r = co_await do_write(offset, buf, fua);
        }
    } else if (compressed) {
        r = co_await do_write_compressed(offset, buf);
    } else {
        r = co_await do_write(offset, buf, fua);
    }
    notify_write(offset, buf.size());
    acct_.finish(ck, bool(r));
    co_return r;
}

asio::awaitable<result<void>> node::write_zeroes(std::uint64_t offset, std::uint64_t length, zero_flags flags)
{
    if (auto r = check_request(offset, length, true); !r) {
        acct_.invalid(stats::op::write);
        co_return r;
    }
    const auto pieces = zero_write_ends(offset, length, write_padding());
    for (unsigned i = 0; i < pieces.count; ++i)
        check_write_threshold(pieces.end[i]);
    auto ck = acct_.start(stats::op::write, length);
    if (length == 0) {
        acct_.done(ck);
        co_return result<void>{};
    }
    auto self = shared_from_this();
    intent_scope intent(*this, offset, length);
    if (intent.must_wait)
        co_await intent.hook->wait(offset, length);
    // Like QEMU 7.2, `discard` governs discard requests only: a write-zeroes that may unmap
    // (a mirror's zero areas, NBD WRITE_ZEROES without NO_HOLE) punches a hole either way,
    // so a sparse target stays sparse.
    auto r = co_await do_write_zeroes(offset, length, flags);
    if (!r && r.error() == std::errc::operation_not_supported) {
        // Refused without fallback: nothing was written, and the caller (e.g. the raw node
        // above) emulates it with writes that are counted here as such. Not a failed write.
        if (flags.no_fallback)
            co_return r;
        r = co_await emulate_write_zeroes(offset, length);
    }
    notify_write(offset, length);
    acct_.finish(ck, bool(r));
    co_return r;
}

asio::awaitable<result<void>> node::discard(std::uint64_t offset, std::uint64_t length)
{
    if (auto r = check_request(offset, length, true); !r) {
        acct_.invalid(stats::op::unmap);
        co_return r;
    }
    auto ck = acct_.start(stats::op::unmap, length);
    if (!opts_.discard_unmap || !can_discard()) {
        acct_.done(ck);   // discard=ignore (QEMU's default): nothing changes
        co_return result<void>{};
    }
    check_write_threshold(offset + length);   // zero-length too, as in QEMU
    if (length == 0) {
        acct_.done(ck);
        co_return result<void>{};
    }
    auto self = shared_from_this();
    intent_scope intent(*this, offset, length);
    if (intent.must_wait)
        co_await intent.hook->wait(offset, length);
    auto r = co_await do_discard(offset, length);
    // Discard is advisory: a driver that cannot drop the range leaves the data as it was.
    if (!r && r.error() == std::errc::operation_not_supported)
        r = result<void>{};
    notify_write(offset, length);
    acct_.finish(ck, bool(r));
    co_return r;
}

asio::awaitable<result<void>> node::flush()
{
    auto ck = acct_.start(stats::op::flush, 0);
    unflushed_ = false;   // what completes from now on is not covered by this flush
    auto r = co_await do_flush();
    if (!r)
        unflushed_ = true;
    acct_.finish(ck, bool(r));
    co_return r;
}

std::optional<std::string> node::cannot_resize() const
{
    if (is_filter() && primary_child())
        return primary_child()->cannot_resize();
    return "Image format driver does not support resize";
}

asio::awaitable<result<void>> node::truncate(std::uint64_t size)
{
    if (opts_.read_only)
        co_return errno_error(EPERM);
    auto r = co_await do_truncate(size);
    if (r) {
        unflushed_ = true;
        for (const auto& b : bitmaps_)   // QEMU's bdrv_dirty_bitmap_truncate
            b->bits().resize(this->size());
    }
    co_return r;
}

asio::awaitable<qapi::result<void>> node::resize(std::uint64_t size)
{
    if (opts_.read_only)
        co_return qapi::generic("Image is read-only");
    auto r = co_await do_resize(size);
    if (r)
        unflushed_ = true;
    co_return r;
}

asio::awaitable<qapi::result<void>> node::do_resize(std::uint64_t size)
{
    if (is_filter() && primary_child())
        co_return co_await primary_child()->resize(size);
    if (auto r = co_await do_truncate(size); !r)
        co_return qapi::generic("Could not resize file: " + std::string(std::strerror(r.error().value())));
    co_return qapi::result<void>{};
}

namespace {
/// Drivers may round an extent up; callers rely on it staying within what they asked.
void clamp_status(result<extent>& r, std::uint64_t length) noexcept
{
    if (r && (r->length == 0 || r->length > length))
        r->length = length;
}
} // namespace

asio::awaitable<result<extent>> node::block_status(std::uint64_t offset, std::uint64_t length)
{
    // The range checks, and the answer of a driver that has one without waiting.
    if (auto now = block_status_now(offset, length))
        co_return std::move(*now);
    auto r = co_await do_block_status(offset, length);
    clamp_status(r, length);
    co_return r;
}

std::optional<result<extent>> node::block_status_now(std::uint64_t offset, std::uint64_t length)
{
    if (auto r = check_request(offset, length, false); !r)
        return result<extent>(r.error());
    if (length == 0)
        return result<extent>(errno_error(EINVAL));
    auto r = do_block_status_now(offset, length);
    if (r)
        clamp_status(*r, length);
    return r;
}

asio::awaitable<result<void>> node::emulate_write_zeroes(std::uint64_t offset, std::uint64_t length)
{
    constexpr std::uint64_t chunk_max = 1 << 20;
    io::aligned_buffer zeroes(std::min(length, chunk_max));
    std::memset(zeroes.data(), 0, zeroes.size());
    while (length > 0) {
        std::uint64_t n = std::min<std::uint64_t>(length, zeroes.size());
        auto r = co_await do_write(offset, std::span<const std::byte>(zeroes.data(), n), false);
        if (!r)
            co_return r;
        offset += n;
        length -= n;
    }
    co_return result<void>{};
}

asio::awaitable<result<void>> node::do_write_zeroes(std::uint64_t, std::uint64_t, zero_flags)
{
    co_return errno_error(ENOTSUP);
}

asio::awaitable<result<void>> node::do_discard(std::uint64_t, std::uint64_t) { co_return errno_error(ENOTSUP); }

asio::awaitable<result<void>> node::do_truncate(std::uint64_t) { co_return errno_error(ENOTSUP); }

asio::awaitable<result<void>> node::do_flush() { co_return result<void>{}; }

asio::awaitable<result<void>> node::before_close() { co_return result<void>{}; }

qapi::result<void> node::can_store_new_bitmap(const std::string&, std::uint64_t) const
{
    // QEMU's bdrv_co_can_store_new_dirty_bitmap for drivers without bitmap storage.
    return qapi::generic("Can't store persistent bitmaps to " + name() + ": Operation not supported");
}

asio::awaitable<qapi::result<void>> node::remove_persistent_bitmap(const std::string&)
{
    co_return qapi::result<void>{};
}

asio::awaitable<result<extent>> node::do_block_status(std::uint64_t, std::uint64_t length)
{
    co_return extent{status_data | status_allocated, length};
}

} // namespace bjd::block
