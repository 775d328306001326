// SPDX-License-Identifier: MIT
// qcow2: compressed cluster writes (docs/interop/qcow2.txt, "Compressed Clusters Descriptor"),
// as QEMU 7.2's qcow2_co_pwritev_compressed_part writes them for a backup with compress: true.
//
// Each guest cluster is deflated on its own (zlib's raw deflate, window bits -12, the format
// qcow2 reads; the last cluster of an image that does not end on a cluster boundary is padded
// with zeroes). A cluster whose deflated form is not smaller than cluster_size - 1 bytes is
// written as a normal cluster instead. Compressed data is packed byte by byte into host
// clusters (QEMU's qcow2_alloc_bytes): every compressed cluster adds one reference to each host
// cluster its bytes touch, so a host cluster holding n of them has refcount n.
//
// Only clusters that reference no host bytes (unallocated or plain zero) may be written this
// way (EIO otherwise): compressed data never overwrites. Crash ordering is the write-back
// cache's (node.hpp): the data is written before the L2 entry changes in memory, and
// flush_metadata_locked makes the refcounts durable before the L2 table that points at them.
#include "node.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstring>

namespace bjd::block::qcow2 {

namespace {

/// Raw deflate of `in` into `out`; the compressed size, or none when it does not fit.
std::optional<std::size_t> deflate_cluster(std::span<const std::byte> in, std::span<std::byte> out)
{
    z_stream zs{};
    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return std::nullopt;
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
    zs.avail_in = static_cast<uInt>(in.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = static_cast<uInt>(out.size());
    const int z = deflate(&zs, Z_FINISH);
    const std::size_t n = out.size() - zs.avail_out;
    deflateEnd(&zs);
    if (z != Z_STREAM_END)
        return std::nullopt;   // Z_OK / Z_BUF_ERROR: the output buffer was too small
    return n;
}

} // namespace

asio::awaitable<result<void>> qcow2_node::do_write_compressed(std::uint64_t offset, std::span<const std::byte> buf)
{
    std::vector<std::byte> in(cs_), out(cs_ - 1);
    for (std::uint64_t done = 0; done < buf.size(); done += cs_) {
        const auto chunk = buf.subspan(done, std::min<std::uint64_t>(cs_, buf.size() - done));
        std::memcpy(in.data(), chunk.data(), chunk.size());
        std::memset(in.data() + chunk.size(), 0, cs_ - chunk.size());
        const auto len = deflate_cluster(in, out);
        result<void> r;
        if (!len)
            r = co_await do_write(offset + done, chunk, false);   // does not shrink: as it is
        else
            r = co_await write_compressed_cluster(offset + done, std::span<const std::byte>(out.data(), *len));
        if (!r)
            co_return r;
    }
    co_return result<void>{};
}

asio::awaitable<result<std::uint64_t>> qcow2_node::alloc_compressed_bytes_locked(std::uint64_t len)
{
    // The rest of the host cluster the last compressed cluster ended in, if that cluster is
    // still in use (its compressed clusters may all have been overwritten meanwhile) and can
    // count one more reference.
    if (free_byte_ != 0 && cs_ - free_byte_ % cs_ >= len) {
        auto rc = co_await get_refcount(free_byte_ / cs_);
        if (!rc)
            co_return rc.error();
        if (*rc != 0 && *rc < refcount_max(h_.refcount_order)) {
            const std::uint64_t at = free_byte_;
            if (auto r = co_await update_refcounts(at, len, +1); !r)
                co_return r.error();
            free_byte_ = (at + len) % cs_ == 0 ? 0 : at + len;
            co_return at;
        }
    }
    auto host = co_await alloc_clusters(1);   // refcount 1: this compressed cluster's reference
    if (!host)
        co_return host.error();
    free_byte_ = len == cs_ ? 0 : *host + len;
    co_return *host;
}

asio::awaitable<result<void>> qcow2_node::write_compressed_cluster(std::uint64_t guest, std::span<const std::byte> data)
{
    co_mutex::guard g;
    co_await wait_allocations(g, guest, cs_);
    if (guest >= h_.size)
        co_return errno_error(EINVAL);   // the image shrank while the request waited
    const std::uint64_t cidx = guest / cs_;
    const std::uint64_t l1i = cidx / l2_entries_;
    auto tab = co_await get_l2(l1i, true);
    if (!tab)
        co_return tab.error();
    auto old = decode((**tab)[cidx % l2_entries_], guest);
    if (!old)
        co_return old.error();
    // qcow2_alloc_compressed_cluster_offset: nothing that holds host bytes is overwritten.
    if (referenced_bytes(*old, cs_).second != 0)
        co_return errno_error(EIO);
    auto host = co_await alloc_compressed_bytes_locked(data.size());
    if (!host)
        co_return host.error();
    if (auto r = co_await file()->write(*host, data); !r) {
        (void)co_await update_refcounts(*host, data.size(), -1);   // never referenced
        co_return r;
    }
    // The table may have left the cache while the data was written: look it up again.
    tab = co_await get_l2(l1i, true);
    if (!tab) {
        (void)co_await update_refcounts(*host, data.size(), -1);
        co_return tab.error();
    }
    // Bits 0..x-1 the host byte offset, x..61 the 512-byte sectors after the first one.
    const unsigned x = 62 - (h_.cluster_bits - 8);
    const std::uint64_t sectors = ((*host + data.size() - 1) >> 9) - (*host >> 9);
    (**tab)[cidx % l2_entries_] = *host | oflag_compressed | (sectors << x);   // never OFLAG_COPIED
    mark_dirty(l2_offset(l1i), *tab);
    co_return co_await bound_dirty_locked();
}

} // namespace bjd::block::qcow2
