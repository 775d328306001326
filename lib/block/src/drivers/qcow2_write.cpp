// SPDX-License-Identifier: MIT
// qcow2: writes (in place or allocating with copy-on-write), write_zeroes and discard.
#include "qcow2_node.hpp"

#include "bjd/log.hpp"

#include <algorithm>
#include <cstring>

namespace bjd::block::qcow2 {

namespace {

/// Largest allocation made for one run of a write (bounds the bounce buffer).
constexpr std::uint64_t max_alloc_bytes = 8ull << 20;

bool in_place(const mapping& m) { return m.k == kind::normal && m.copied; }

} // namespace

asio::awaitable<result<void>> qcow2_node::do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua)
{
    // Fast path: every cluster already allocated to this image: map under the lock, write
    // without it. Otherwise the whole request runs under the lock (allocation).
    struct piece {
        std::uint64_t host;
        std::span<const std::byte> data;
    };
    std::vector<piece> pieces;
    auto g = co_await meta_.lock();
    std::uint64_t done = 0;
    bool allocate = false;
    while (done < buf.size()) {
        auto rn = co_await lookup_locked(offset + done, buf.size() - done);
        if (!rn)
            co_return rn.error();
        if (!in_place(rn->m)) {
            allocate = true;
            break;
        }
        pieces.push_back({rn->m.host, buf.subspan(done, rn->bytes)});
        done += rn->bytes;
    }
    result<void> r;
    if (allocate) {
        r = co_await write_locked(offset, buf);
        g.release();
    } else {
        // The clusters stay ours until the writes are done, even if a discard frees them.
        io_pin pin(this);
        g.release();
        for (const piece& p : pieces) {
            r = co_await file()->write(p.host, p.data);
            if (!r)
                break;
        }
    }
    if (r && fua)
        r = co_await file()->flush();
    co_return r;
}

asio::awaitable<result<void>> qcow2_node::write_locked(std::uint64_t offset, std::span<const std::byte> buf)
{
    std::uint64_t pos = offset;
    const std::uint64_t end = offset + buf.size();
    while (pos < end) {
        auto rn = co_await lookup_locked(pos, end - pos);
        if (!rn)
            co_return rn.error();
        if (in_place(rn->m)) {
            if (auto r = co_await file()->write(rn->m.host, buf.subspan(pos - offset, rn->bytes)); !r)
                co_return r;
            pos += rn->bytes;
            continue;
        }
        const std::uint64_t first = pos / cs_ * cs_;
        const std::uint64_t max_n = std::max<std::uint64_t>(1, max_alloc_bytes / cs_);
        const std::uint64_t n = std::min(max_n, (pos + rn->bytes - first + cs_ - 1) / cs_);
        const std::uint64_t seg_end = std::min(pos + rn->bytes, first + n * cs_);
        auto r = co_await allocate_and_write_locked(first, n, pos, buf.subspan(pos - offset, seg_end - pos));
        if (!r)
            co_return r.error();
        pos = std::min(seg_end, first + *r * cs_);
    }
    co_return result<void>{};
}

asio::awaitable<result<std::uint64_t>> qcow2_node::allocate_and_write_locked(std::uint64_t first_guest,
                                                                             std::uint64_t n, std::uint64_t data_off,
                                                                             std::span<const std::byte> data)
{
    const std::uint64_t cidx = first_guest / cs_;
    const std::uint64_t l1i = cidx / l2_entries_;
    const std::uint64_t l2i = cidx % l2_entries_;
    auto tab = co_await get_l2(l1i, true);
    if (!tab)
        co_return tab.error();
    std::shared_ptr<l2_table> t = *tab;
    const std::uint64_t l2_off = l2_offset(l1i);

    std::vector<mapping> olds(n);
    for (std::uint64_t j = 0; j < n; ++j) {
        auto m = decode((*t)[l2i + j], first_guest + j * cs_);
        if (!m)
            co_return m.error();
        olds[j] = *m;
    }
    std::uint64_t got = 0;
    auto host = co_await alloc_clusters(n, &got);
    if (!host)
        co_return host.error();
    if (got < n) {
        // Fragmented free space: this run covers the first `got` clusters only.
        n = got;
        olds.resize(n);
        const std::uint64_t run_end = first_guest + n * cs_;
        data = data.first(std::min<std::uint64_t>(data.size(), run_end - data_off));
    }

    const std::uint64_t span_bytes = n * cs_;
    if (data_off == first_guest && data.size() == span_bytes) {
        if (auto r = co_await file()->write(*host, data); !r)
            co_return r.error();
    } else {
        // Copy-on-write: the untouched parts of the first and last cluster keep what they
        // read as before (backing data, zeroes, compressed or shared data).
        std::vector<std::byte> bounce(span_bytes);
        const std::uint64_t rel_start = data_off - first_guest;
        const std::uint64_t rel_end = rel_start + data.size();
        if (rel_start % cs_ != 0) {
            auto r = co_await read_mapped(olds[0], first_guest, std::span(bounce.data(), cs_));
            if (!r)
                co_return r.error();
        }
        const std::uint64_t last = n - 1;
        if (rel_end < span_bytes && !(last == 0 && rel_start % cs_ != 0)) {
            auto r = co_await read_mapped(olds[last], first_guest + last * cs_,
                                          std::span(bounce.data() + last * cs_, cs_));
            if (!r)
                co_return r.error();
        }
        std::memcpy(bounce.data() + rel_start, data.data(), data.size());
        if (auto r = co_await file()->write(*host, bounce); !r)
            co_return r.error();
    }

    for (std::uint64_t j = 0; j < n; ++j)
        (*t)[l2i + j] = (*host + j * cs_) | oflag_copied;
    if (auto r = co_await write_l2_entries(l2_off, *t, l2i, l2i + n - 1); !r)
        co_return r.error();

    // Only now drop the clusters the entries used to reference, once the new entries are
    // durable: a refcount of 0 must never reach the disk before the entry that dropped it.
    if (std::any_of(olds.begin(), olds.end(), [](const mapping& m) {
            return m.k == kind::normal || m.k == kind::zero_alloc || m.k == kind::compressed;
        }))
        if (auto r = co_await file()->flush(); !r)
            co_return r.error();
    for (const mapping& m : olds) {
        result<void> r;
        if (m.k == kind::normal || m.k == kind::zero_alloc)
            r = co_await update_refcounts(m.host, cs_, -1);
        else if (m.k == kind::compressed)
            r = co_await update_refcounts(m.host & ~std::uint64_t(511), m.comp_len + (m.host & 511), -1);
        if (!r)
            co_return r.error();
    }
    co_return n;
}

asio::awaitable<result<void>> qcow2_node::clear_clusters_locked(std::uint64_t offset, std::uint64_t length,
                                                                clear_mode mode)
{
    const std::uint64_t end = offset + length;
    for (std::uint64_t pos = offset; pos < end;) {
        const std::uint64_t cidx = pos / cs_;
        const std::uint64_t l1i = cidx / l2_entries_;
        const std::uint64_t l2i = cidx % l2_entries_;
        const std::uint64_t n = std::min((end - pos) / cs_, l2_entries_ - l2i);
        // An unallocated table already reads as zeroes unless a backing file shows through.
        const bool need_table = mode != clear_mode::deallocate && backing() != nullptr;
        auto tab = co_await get_l2(l1i, need_table && l2_offset(l1i) == 0);
        if (!tab)
            co_return tab.error();
        if (!*tab) {
            pos += n * cs_;
            continue;
        }
        l2_table& t = **tab;
        std::vector<mapping> freed;
        std::uint64_t lo = l2_entries_, hi = 0;
        for (std::uint64_t j = 0; j < n; ++j) {
            const std::uint64_t old = t[l2i + j];
            auto m = decode(old, pos + j * cs_);
            if (!m)
                co_return m.error();
            std::uint64_t ne = old;
            bool drop = false;
            switch (mode) {
            case clear_mode::zero_keep:
                if (in_place(*m) || m->k == kind::zero_alloc) {
                    ne = m->host | oflag_copied | oflag_zero;
                } else if (m->k != kind::unallocated || backing()) {
                    ne = oflag_zero;
                    drop = m->k != kind::unallocated && m->k != kind::zero_plain;
                }
                break;
            case clear_mode::zero_unmap:
                if (m->k != kind::unallocated || backing()) {
                    ne = oflag_zero;
                    drop = m->k == kind::normal || m->k == kind::zero_alloc || m->k == kind::compressed;
                }
                break;
            case clear_mode::discard:
                // Like QEMU: a discarded allocated cluster becomes a zero cluster (it reads as
                // zeroes, and stays "present" for block status); other clusters only change
                // when a backing file would show through.
                if (m->k == kind::normal || m->k == kind::zero_alloc || m->k == kind::compressed) {
                    ne = oflag_zero;
                    drop = true;
                } else {
                    ne = backing() ? oflag_zero : 0;
                }
                break;
            case clear_mode::deallocate:
                ne = 0;
                drop = m->k == kind::normal || m->k == kind::zero_alloc || m->k == kind::compressed;
                break;
            }
            if (ne == old)
                continue;
            t[l2i + j] = ne;
            lo = std::min(lo, l2i + j);
            hi = std::max(hi, l2i + j);
            if (drop)
                freed.push_back(*m);
        }
        if (lo <= hi) {
            if (auto r = co_await write_l2_entries(l2_offset(l1i), t, lo, hi); !r)
                co_return r;
        }
        // The entries that dropped clusters are written before the refcounts that free them.
        // Not flushed in between (an fsync per discard stalls clients on a busy disk): a
        // process crash cannot reorder the two, a power loss could (see qcow2_node.hpp).
        for (const mapping& m : freed) {
            result<void> r = m.k == kind::compressed
                                 ? co_await update_refcounts(m.host & ~std::uint64_t(511), m.comp_len + (m.host & 511), -1)
                                 : co_await update_refcounts(m.host, cs_, -1);
            if (!r)
                co_return r;
        }
        pos += n * cs_;
    }
    co_return result<void>{};
}

asio::awaitable<result<bool>> qcow2_node::reads_as_zero_locked(std::uint64_t offset)
{
    auto rn = co_await lookup_locked(offset, 1);
    if (!rn)
        co_return result<bool>(boost::system::in_place_error, rn.error());
    if (rn->m.k == kind::zero_plain || rn->m.k == kind::zero_alloc)
        co_return true;
    if (rn->m.k != kind::unallocated)
        co_return false;
    node* b = backing();
    co_return !b || offset / cs_ * cs_ >= b->size();
}

asio::awaitable<result<void>> qcow2_node::do_write_zeroes(std::uint64_t offset, std::uint64_t length, zero_flags f)
{
    // v2 has no zero flag: only an image without backing can drop clusters to get zeroes.
    if (h_.version < 3 && (backing() || !f.may_unmap))
        co_return errno_error(ENOTSUP);
    const std::uint64_t end = offset + length;
    const std::uint64_t a_start = (offset + cs_ - 1) / cs_ * cs_;
    // The last cluster of an image whose size is not cluster aligned counts as whole.
    std::uint64_t a_end = end == size() ? (end + cs_ - 1) / cs_ * cs_ : end / cs_ * cs_;
    if (a_end < a_start)
        a_end = a_start;

    auto g = co_await meta_.lock();
    struct part {
        std::uint64_t off, len;
    };
    std::vector<part> partial;
    if (a_start >= a_end) {
        partial.push_back({offset, length});
    } else {
        if (offset < a_start)
            partial.push_back({offset, a_start - offset});
        if (a_end < end)
            partial.push_back({a_end, end - a_end});
    }
    std::vector<part> to_write;
    for (const part& p : partial) {
        // A range inside one cluster (or two, when it straddles) is zero already or written.
        for (std::uint64_t o = p.off; o < p.off + p.len;) {
            std::uint64_t n = std::min(p.off + p.len, (o / cs_ + 1) * cs_) - o;
            auto z = co_await reads_as_zero_locked(o);
            if (!z)
                co_return z.error();
            if (!*z) {
                if (f.no_fallback)
                    co_return errno_error(ENOTSUP);
                to_write.push_back({o, n});
            }
            o += n;
        }
    }
    for (const part& p : to_write) {
        std::vector<std::byte> zero(p.len);
        if (auto r = co_await write_locked(p.off, zero); !r)
            co_return r;
    }
    if (a_start < a_end) {
        clear_mode mode = h_.version < 3 ? clear_mode::deallocate
                                         : (f.may_unmap ? clear_mode::zero_unmap : clear_mode::zero_keep);
        if (auto r = co_await clear_clusters_locked(a_start, a_end - a_start, mode); !r)
            co_return r;
    }
    co_return result<void>{};
}

asio::awaitable<result<void>> qcow2_node::do_discard(std::uint64_t offset, std::uint64_t length)
{
    // Whole clusters only; partial ones keep their data (discard is advisory).
    const std::uint64_t end = offset + length;
    const std::uint64_t a_start = (offset + cs_ - 1) / cs_ * cs_;
    const std::uint64_t a_end = end == size() ? (end + cs_ - 1) / cs_ * cs_ : end / cs_ * cs_;
    if (a_start >= a_end)
        co_return result<void>{};
    auto g = co_await meta_.lock();
    // v3 keeps a discarded cluster reading as zeroes with the zero flag (no backing data
    // shows through); v2 has no zero flag and drops the cluster.
    clear_mode mode = h_.version >= 3 ? clear_mode::discard : clear_mode::deallocate;
    co_return co_await clear_clusters_locked(a_start, a_end - a_start, mode);
}

} // namespace bjd::block::qcow2
