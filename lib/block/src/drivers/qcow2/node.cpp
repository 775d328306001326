// SPDX-License-Identifier: MIT
// qcow2: opening an image, mapping guest clusters, reads and block status.
#include "node.hpp"

#include "bjd/block/query.hpp"
#include "bjd/log.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <zlib.h>

#include <algorithm>
#include <cstring>

namespace bjd::block {
namespace qcow2 {

// ---- co_mutex ----------------------------------------------------------------------------------

asio::awaitable<co_mutex::guard> co_mutex::lock()
{
    if (!locked_) {
        locked_ = true;
        co_return guard(this);
    }
    auto ex = co_await asio::this_coro::executor;
    auto t = std::make_shared<asio::steady_timer>(ex, asio::steady_timer::time_point::max());
    waiters_.push_back(t);
    co_await t->async_wait(bjd::nothrow_awaitable);
    // unlock() handed the lock to us: locked_ stayed true.
    co_return guard(this);
}

void co_mutex::unlock()
{
    if (waiters_.empty()) {
        locked_ = false;
        return;
    }
    auto t = std::move(waiters_.front());
    waiters_.pop_front();
    t->cancel();
}

// ---- open --------------------------------------------------------------------------------------

qcow2_node::qcow2_node(node_options o, std::shared_ptr<node> file, header h, const qcow2_open_options& opts)
    : node(std::move(o)), h_(std::move(h)), cs_(h_.cluster_size()), l2_entries_(cs_ / 8),
      rb_entries_(refblock_entries(h_))
{
    add_child("file", std::move(file));
    info_.version = h_.version;
    info_.backing_file = h_.backing_file;
    info_.backing_format = h_.backing_format;
    auto_backing_file_ = h_.backing_file;
    info_.lazy_refcounts = (h_.compatible & compat_lazy_refcounts) != 0;
    info_.corrupt = (h_.incompatible & incompat_corrupt) != 0;
    info_.refcount_bits = 1u << h_.refcount_order;
    info_.nb_snapshots = h_.nb_snapshots;

    // Default L2 cache: enough to map the whole image, bounded like QEMU's (32 MiB).
    l2_cache_auto_ = opts.l2_cache_bytes == 0;
    size_l2_cache(opts.l2_cache_bytes);
    std::uint64_t rb_bytes = opts.refcount_cache_bytes ? opts.refcount_cache_bytes : (1ull << 20);
    rb_cache_.set_capacity(std::max<std::uint64_t>(4, rb_bytes / cs_));
}

void qcow2_node::size_l2_cache(std::uint64_t bytes)
{
    if (bytes == 0)
        bytes = std::min<std::uint64_t>(32ull << 20, (h_.size / cs_ + 1) * 8 + cs_);
    l2_cache_.set_capacity(std::max<std::uint64_t>(2, bytes / cs_));
}

qcow2_node::~qcow2_node()
{
    if (!dirty_l2_.empty() || !dirty_rb_.empty() || !dirty_l1_.empty() || !pending_free_.empty())
        log::get("qcow2")->error("qcow2 node '{}' ({}): closed without a flush; {} L2 table(s) and {} refcount "
                                 "block(s) were not written back",
                                 name(), filename(), dirty_l2_.size(), dirty_rb_.size());
}

asio::awaitable<qapi::result<void>> qcow2_node::load()
{
    // The header parser checked both tables lie inside the file and their sizes are bounded.
    std::vector<std::byte> buf(std::max<std::uint64_t>(std::uint64_t(h_.l1_size) * 8,
                                                       std::uint64_t(h_.refcount_table_clusters) * cs_));
    if (h_.l1_size > 0) {
        auto r = co_await file()->read(h_.l1_table_offset, std::span(buf.data(), std::size_t(h_.l1_size) * 8));
        if (!r)
            co_return qapi::generic("Could not read L1 table: " + strerror_text(r.error()));
        l1_.resize(h_.l1_size);
        for (std::size_t i = 0; i < l1_.size(); ++i)
            l1_[i] = load_be64(buf.data() + i * 8);
    }
    std::size_t rt_bytes = std::size_t(h_.refcount_table_clusters) * cs_;
    auto r = co_await file()->read(h_.refcount_table_offset, std::span(buf.data(), rt_bytes));
    if (!r)
        co_return qapi::generic("Could not read refcount table: " + strerror_text(r.error()));
    reftable_.resize(rt_bytes / 8);
    for (std::size_t i = 0; i < reftable_.size(); ++i)
        reftable_[i] = load_be64(buf.data() + i * 8);
    reftable_offset_ = h_.refcount_table_offset;

    if (!read_only()) {
        if (h_.incompatible & incompat_corrupt)
            co_return qapi::generic("qcow2: Image is corrupt; cannot be opened read/write");
        // Shared tables would multiply what allocation and repair scan (issue #8): a crafted
        // file of a few KiB could stall the loop for minutes on its first write.
        if (std::uint64_t d = first_duplicate(l1_, offset_mask))
            co_return qapi::generic("qcow2: Image is corrupt (L2 table at offset " + std::to_string(d) +
                                    " is referenced twice by the L1 table); cannot be opened read/write");
        if (std::uint64_t d = first_duplicate(reftable_, ~reftable_reserved))
            co_return qapi::generic("qcow2: Image is corrupt (refcount block at offset " + std::to_string(d) +
                                    " is referenced twice by the refcount table); cannot be opened read/write");
        if (h_.incompatible & incompat_dirty) {
            // Like QEMU: a writable open of an image left dirty by lazy refcounts repairs them.
            std::string err;
            if (auto rr = co_await repair_dirty(err); !rr)
                co_return qapi::generic("qcow2: Could not repair dirty image: " +
                                        (err.empty() ? strerror_text(rr.error()) : err));
        }
        // Autoclear bits we do not maintain are cleared before writing (qcow2.txt); the
        // bitmaps bit stays while the extension it vouches for is kept up to date.
        const std::uint64_t keep = h_.has_bitmaps_ext ? autoclear_bitmaps : 0;
        if (h_.autoclear & ~keep) {
            std::byte be[8];
            store_be64(be, h_.autoclear & keep);
            auto w = co_await file()->write(off_autoclear, std::span<const std::byte>(be, 8));
            if (!w)
                co_return qapi::generic("Could not update qcow2 header: " + strerror_text(w.error()));
            h_.autoclear &= keep;
        }
    }
    if (auto b = co_await load_bitmaps(); !b)
        co_return b;
    co_return qapi::result<void>{};
}

std::error_code qcow2_node::corrupt(const std::string& what) const
{
    log::get("qcow2")->error("qcow2 node '{}' ({}): corrupt metadata: {}", name(), filename(), what);
    return errno_error(EIO);
}

// ---- mapping -------------------------------------------------------------------------------------

result<mapping> qcow2_node::decode(std::uint64_t e, std::uint64_t guest) const
{
    mapping m;
    std::string why;
    if (!decode_l2_entry(h_, e, file()->size(), m, why))
        return corrupt(why + " (guest offset " + std::to_string(guest) + ")");
    return m;
}

namespace {

bool reads_zero(kind k) { return k == kind::zero_plain || k == kind::zero_alloc; }

/// Whether cluster `next` (k clusters after `first`) reads the same way, contiguously.
bool same_run(const mapping& first, const mapping& next, std::uint64_t k, std::uint64_t cs)
{
    if (first.k == kind::compressed || next.k == kind::compressed)
        return false;
    if (reads_zero(first.k))
        return reads_zero(next.k);
    if (first.k != next.k)
        return false;
    return first.k == kind::unallocated || (next.host == first.host + k * cs && next.copied == first.copied);
}

} // namespace

asio::awaitable<result<run>> qcow2_node::lookup_locked(std::uint64_t offset, std::uint64_t length)
{
    const std::uint64_t cidx = offset / cs_;
    const std::uint64_t l1i = cidx / l2_entries_;
    const std::uint64_t l2i = cidx % l2_entries_;
    const std::uint64_t in_cluster = offset % cs_;
    const std::uint64_t max_bytes = std::min(length, (l2_entries_ - l2i) * cs_ - in_cluster);
    if (l1i >= l1_.size())
        co_return corrupt("guest offset " + std::to_string(offset) + " beyond the L1 table");
    auto t = co_await get_l2(l1i, false);
    if (!t)
        co_return t.error();
    if (!*t)
        co_return run{mapping{}, max_bytes};
    const l2_table& tab = **t;
    auto m0 = decode(tab[l2i], offset);
    if (!m0)
        co_return m0.error();
    std::uint64_t bytes = cs_ - in_cluster;
    for (std::uint64_t j = l2i + 1; bytes < max_bytes && j < l2_entries_; ++j) {
        auto mj = decode(tab[j], (cidx + j - l2i) * cs_);
        if (!mj || !same_run(*m0, *mj, j - l2i, cs_))
            break;
        bytes += cs_;
    }
    run r{*m0, std::min(bytes, max_bytes)};
    if (r.m.k == kind::normal)
        r.m.host += in_cluster;   // the byte that maps `offset`
    co_return r;
}

// ---- reads ---------------------------------------------------------------------------------------

asio::awaitable<result<void>> qcow2_node::read_backing(std::uint64_t offset, std::span<std::byte> buf)
{
    node* b = backing();
    std::uint64_t n = 0;
    if (b && offset < b->size())
        n = std::min<std::uint64_t>(buf.size(), b->size() - offset);
    if (n > 0) {
        auto r = co_await b->read(offset, buf.first(n));
        if (!r)
            co_return r;
    }
    std::memset(buf.data() + n, 0, buf.size() - n);
    co_return result<void>{};
}

asio::awaitable<result<void>> qcow2_node::read_compressed(const mapping& m, std::span<std::byte> cluster)
{
    const std::uint64_t fsize = file()->size();
    std::uint64_t len = std::min(m.comp_len, fsize - m.host);
    std::vector<std::byte> in(len);
    auto r = co_await file()->read(m.host, in);
    if (!r)
        co_return r;
    z_stream zs{};
    if (inflateInit2(&zs, -12) != Z_OK)
        co_return errno_error(ENOMEM);
    zs.next_in = reinterpret_cast<Bytef*>(in.data());
    zs.avail_in = static_cast<uInt>(in.size());
    zs.next_out = reinterpret_cast<Bytef*>(cluster.data());
    zs.avail_out = static_cast<uInt>(cluster.size());
    int z = inflate(&zs, Z_FINISH);
    bool ok = (z == Z_STREAM_END || z == Z_BUF_ERROR || z == Z_OK) && zs.avail_out == 0;
    inflateEnd(&zs);
    if (!ok)
        co_return corrupt("compressed cluster at " + std::to_string(m.host) + " does not inflate");
    co_return result<void>{};
}

asio::awaitable<result<void>> qcow2_node::read_mapped(const mapping& m, std::uint64_t offset, std::span<std::byte> buf)
{
    switch (m.k) {
    case kind::unallocated:
        co_return co_await read_backing(offset, buf);
    case kind::zero_plain:
    case kind::zero_alloc:
        std::memset(buf.data(), 0, buf.size());
        co_return result<void>{};
    case kind::normal: {
        // A cluster that ends past a truncated file reads as zeroes past the end.
        std::uint64_t fsize = file()->size();
        std::uint64_t n = m.host < fsize ? std::min<std::uint64_t>(buf.size(), fsize - m.host) : 0;
        if (n > 0) {
            auto r = co_await file()->read(m.host, buf.first(n));
            if (!r)
                co_return r;
        }
        std::memset(buf.data() + n, 0, buf.size() - n);
        co_return result<void>{};
    }
    case kind::compressed: {
        std::vector<std::byte> cluster(cs_);
        auto r = co_await read_compressed(m, cluster);
        if (!r)
            co_return r;
        std::memcpy(buf.data(), cluster.data() + offset % cs_, buf.size());
        co_return result<void>{};
    }
    }
    co_return errno_error(EIO);
}

asio::awaitable<result<void>> qcow2_node::do_read(std::uint64_t offset, std::span<std::byte> buf)
{
    std::uint64_t done = 0;
    while (done < buf.size()) {
        auto g = co_await meta_.lock();
        auto rn = co_await lookup_locked(offset + done, buf.size() - done);
        io_pin pin(this);   // the clusters stay ours until the read is done
        g.release();
        if (!rn)
            co_return rn.error();
        auto r = co_await read_mapped(rn->m, offset + done, buf.subspan(done, rn->bytes));
        if (!r)
            co_return r;
        done += rn->bytes;
    }
    co_return result<void>{};
}

asio::awaitable<result<extent>> qcow2_node::do_block_status(std::uint64_t offset, std::uint64_t length)
{
    auto g = co_await meta_.lock();
    auto rn = co_await lookup_locked(offset, length);
    g.release();
    if (!rn)
        co_return rn.error();
    switch (rn->m.k) {
    case kind::normal:
    case kind::compressed:
        co_return extent{status_data | status_allocated, rn->bytes};
    case kind::zero_plain:
    case kind::zero_alloc:
        co_return extent{status_zero | status_allocated, rn->bytes};
    case kind::unallocated:
        break;
    }
    node* b = backing();
    if (!b || offset >= b->size())
        co_return extent{status_zero, rn->bytes};
    auto be = co_await b->block_status(offset, std::min<std::uint64_t>(rn->bytes, b->size() - offset));
    if (!be)
        co_return be.error();
    co_return extent{be->flags & ~unsigned(status_allocated), be->length};
}

asio::awaitable<result<void>> qcow2_node::do_flush()
{
    auto g = co_await meta_.lock();
    co_return co_await flush_metadata_locked();
}

} // namespace qcow2

// ---- public entry points -------------------------------------------------------------------------

asio::awaitable<qapi::result<std::shared_ptr<node>>> open_qcow2(node_options common, std::shared_ptr<node> file,
                                                                 qcow2_open_options opts)
{
    if (!common.read_only && file->read_only())
        co_return qapi::generic("Block node is read-only");
    const std::uint64_t fsize = file->size();
    // First the fixed header (for the cluster size), then the whole first cluster.
    std::vector<std::byte> first(std::min<std::uint64_t>(fsize, 512));
    if (auto r = co_await file->read(0, first); !r)
        co_return qapi::generic("Could not read qcow2 header: " + strerror_text(r.error()));
    if (first.size() >= 24 && qcow2::load_be32(first.data()) == qcow2::magic) {
        std::uint32_t bits = qcow2::load_be32(first.data() + 20);
        if (bits >= qcow2::min_cluster_bits && bits <= qcow2::max_cluster_bits) {
            first.resize(std::min<std::uint64_t>(fsize, 1ull << bits));
            if (auto r = co_await file->read(0, first); !r)
                co_return qapi::generic("Could not read qcow2 header: " + strerror_text(r.error()));
        }
    }
    qcow2::header h;
    std::string err;
    if (!qcow2::parse_header(first, fsize, h, err))
        co_return qapi::generic(err);
    auto n = std::make_shared<qcow2::qcow2_node>(std::move(common), std::move(file), std::move(h), opts);
    if (auto r = co_await n->load(); !r)
        co_return r.error();
    co_return std::shared_ptr<node>(std::move(n));
}

std::optional<boost::json::object> qcow2::qcow2_node::json_options() const
{
    // QEMU's bdrv_backing_overridden: the backing child is not what the header names, or
    // the header names one and there is none.
    if (node* b = backing()) {
        if (auto_backing_file_ == b->filename())
            return std::nullopt;
        return boost::json::object{{"backing", options_json(*b)}, {"driver", "qcow2"}, {"file", options_json(*file())}};
    }
    if (info_.backing_file.empty())
        return std::nullopt;
    return boost::json::object{{"backing", nullptr}, {"driver", "qcow2"}, {"file", options_json(*file())}};
}

qapi::result<void> set_qcow2_backing(node& image, std::shared_ptr<node> backing)
{
    auto* q = dynamic_cast<qcow2::qcow2_node*>(&image);
    if (!q)
        return qapi::generic("Driver '" + std::string(image.driver()) + "' does not support backing files");
    if (!backing) {
        q->detach_backing();
        (void)image.refresh_permissions();   // gives permissions up: cannot fail
        return {};
    }
    if (image.backing())
        return qapi::generic("Node '" + image.name() + "' already has a backing child");
    q->attach_backing(std::move(backing));
    if (auto r = image.refresh_permissions(); !r) {
        q->detach_backing();
        return r;
    }
    return {};
}

void note_backing_from_header(node& image)
{
    if (auto* q = dynamic_cast<qcow2::qcow2_node*>(&image); q && q->backing())
        q->set_auto_backing_file(q->backing()->filename());
}

const qcow2_image_info* qcow2_info(const node& n) noexcept
{
    auto* q = dynamic_cast<const qcow2::qcow2_node*>(&n);
    return q ? &q->info() : nullptr;
}

asio::awaitable<qapi::result<std::string>> probe_format(node& file)
{
    std::byte magic[4]{};
    if (file.size() < 4)
        co_return std::string("raw");
    if (auto r = co_await file.read(0, std::span(magic, 4)); !r)
        co_return qapi::generic("Could not read image for determining its format: " + strerror_text(r.error()));
    co_return std::string(qcow2::load_be32(magic) == qcow2::magic ? "qcow2" : "raw");
}

} // namespace bjd::block
