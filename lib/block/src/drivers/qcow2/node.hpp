// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The qcow2 node (private to the driver): state shared by node.cpp (open, reads, status),
/// write.cpp (writes, zeroes, discard) and meta.cpp (L2 cache, refcounts,
/// allocation).
///
/// Metadata is a write-back cache, like QEMU's qcow2 caches: L2 tables, refcount blocks and
/// L1 entries change in memory (`dirty_l2_`, `dirty_rb_`, `dirty_l1_`) and reach the file in
/// flush_metadata_locked(), on a guest flush, a FUA write, when too many tables are dirty, and
/// before the graph lets the node go (it flushes first). An allocating write therefore costs
/// its data write only.
///
/// Crash ordering (flush_metadata_locked): refcount blocks first, fsync (which also covers the
/// data written so far), then L2 tables, fsync, then the L1 entries that point at new tables,
/// fsync. Increments are thus durable before any reference to their clusters. A cluster whose
/// last reference goes away (rewrite, discard, write-zeroes) is not decremented at once: it
/// waits in `pending_free_` until the L2 entries that dropped it are durable, so a refcount of 0
/// never reaches the disk before the reference is gone. A process kill or power loss at any
/// point leaves the image as of the last flush, plus leaked clusters at most; writes not yet
/// flushed may be lost, as the block layer allows.
///
/// Concurrency: requests are coroutines on the node's loop. `meta_` serialises every access to
/// the metadata (L1/L2/refcounts and their caches). Reads and in-place writes hold it only
/// while mapping a run. An allocating write plans under the lock (clusters reserved in memory,
/// its guest clusters registered in `allocating_`), writes its data without it, and takes it
/// again to link the new clusters into the L2 table; writes, write-zeroes and discards that
/// overlap an allocation in flight wait for it, so a guest cluster is never allocated twice.
///
/// Cluster reuse (like QEMU's free_cluster_index): allocation scans the refcounts upwards from
/// `free_hint_` for clusters with refcount 0, so clusters freed by discard, write-zeroes or a
/// rewrite are handed out again. A freed cluster is first held back ("quarantine", `held_`)
/// until no read or in-place write that mapped it before the free is still in flight (those
/// run without `meta_`; each pins the free generation it mapped at, `inflight_`), so such a
/// request can never touch a cluster that belongs to someone else by then.
#include "bjd/block/driver.hpp"
#include "format.hpp"

#include <boost/asio/steady_timer.hpp>

#include <deque>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>

namespace bjd::block::qcow2 {

/// An asynchronous mutex for coroutines on one loop; the lock is handed to waiters in order.
class co_mutex {
public:
    class guard {
    public:
        guard() = default;
        explicit guard(co_mutex* m) : m_(m) {}
        guard(guard&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
        guard& operator=(guard&& o) noexcept
        {
            if (this != &o) {
                release();
                m_ = std::exchange(o.m_, nullptr);
            }
            return *this;
        }
        ~guard() { release(); }
        void release()
        {
            if (m_)
                std::exchange(m_, nullptr)->unlock();
        }

    private:
        co_mutex* m_ = nullptr;
    };

    asio::awaitable<guard> lock();
    void unlock();

private:
    bool locked_ = false;
    std::deque<std::shared_ptr<asio::steady_timer>> waiters_;
};

/// A bounded LRU cache of metadata clusters keyed by host offset. Entries are shared so an
/// eviction never frees a table a coroutine still uses.
template <class T>
class lru_cache {
public:
    explicit lru_cache(std::size_t capacity = 16) : capacity_(capacity ? capacity : 1) {}
    void set_capacity(std::size_t c) { capacity_ = c ? c : 1; }
    std::size_t capacity() const noexcept { return capacity_; }

    std::shared_ptr<T> find(std::uint64_t key)
    {
        auto it = map_.find(key);
        if (it == map_.end())
            return nullptr;
        order_.splice(order_.begin(), order_, it->second.pos);
        return it->second.value;
    }
    void insert(std::uint64_t key, std::shared_ptr<T> v)
    {
        if (auto it = map_.find(key); it != map_.end()) {
            it->second.value = std::move(v);
            order_.splice(order_.begin(), order_, it->second.pos);
            return;
        }
        order_.push_front(key);
        map_.emplace(key, slot{std::move(v), order_.begin()});
        while (map_.size() > capacity_) {
            map_.erase(order_.back());
            order_.pop_back();
        }
    }
    void erase(std::uint64_t key)
    {
        if (auto it = map_.find(key); it != map_.end()) {
            order_.erase(it->second.pos);
            map_.erase(it);
        }
    }
    std::size_t size() const noexcept { return map_.size(); }

private:
    struct slot {
        std::shared_ptr<T> value;
        std::list<std::uint64_t>::iterator pos;
    };
    std::size_t capacity_;
    std::list<std::uint64_t> order_;
    std::unordered_map<std::uint64_t, slot> map_;
};

/// A run of guest clusters that read the same way (one host extent for `normal`).
struct run {
    mapping m;
    std::uint64_t bytes = 0;      ///< from the asked offset, ≤ the asked length
};

using l2_table = std::vector<std::uint64_t>;     // host byte order
using refblock = std::vector<std::byte>;         // raw on-disk bytes

class qcow2_node final : public node {
public:
    qcow2_node(node_options o, std::shared_ptr<node> file, header h, const qcow2_open_options& opts);
    /// Says so, loudly, if metadata was never written back (nobody flushed before the close).
    ~qcow2_node() override;

    std::string_view driver() const noexcept override { return "qcow2"; }
    /// {"backing": null, …} when the header names a backing file that is not attached (QEMU's
    /// bdrv_backing_overridden): the file name alone would open a different chain.
    std::optional<boost::json::object> json_options() const override;
    std::uint64_t size() const noexcept override { return h_.size; }
    std::int64_t allocated_size() const override { return file()->allocated_size(); }
    std::uint32_t cluster_size() const noexcept override { return static_cast<std::uint32_t>(cs_); }
    bool zero_init() const noexcept override { return backing() == nullptr; }
    bool supports_compressed_writes() const noexcept override { return true; }

protected:
    // The file holds the metadata: a writable image writes and resizes it even without
    // parents, and nobody else may write or resize it.
    perm_pair child_permissions(const edge& child, perm_pair cumulative) const override
    {
        if (child.role() == "file")
            return storage_child_perms(cumulative, true, !read_only());
        return node::child_permissions(child, cumulative);
    }

public:

    /// Reads the L1 and refcount tables and prepares the image for writing. Open-time errors
    /// are one phrase.
    asio::awaitable<qapi::result<void>> load();
    void attach_backing(std::shared_ptr<node> b) { add_child("backing", std::move(b)); }
    void detach_backing() { remove_child("backing"); }
    const qcow2_image_info& info() const noexcept { return info_; }
    /// QEMU's auto_backing_file: the header's backing name, or the file name of the backing
    /// image opened from it; a backing child with another file name was given instead of it.
    void set_auto_backing_file(std::string f) { auto_backing_file_ = std::move(f); }
    /// change-backing-file (create_backing.cpp): rewrites the header's backing file name and
    /// backing-format extension (none when `fmt` is empty), keeping the other extensions.
    asio::awaitable<result<void>> change_backing_file(const std::string& file, const std::string& fmt);

    // ---- bitmaps.cpp: persistent dirty bitmaps (qcow2.txt, "Bitmaps extension") ----
    bool close_work() const noexcept override;
    /// Writes the persistent bitmaps back (QEMU's qcow2_store_persistent_dirty_bitmaps) and
    /// trims the file's grown-ahead tail.
    asio::awaitable<result<void>> before_close() override;
    qapi::result<void> can_store_new_bitmap(const std::string& name, std::uint64_t granularity) const override;
    /// The bitmap directory as the file holds it now.
    const std::vector<bitmap_dir_entry>& stored_bitmaps() const noexcept { return stored_; }
    asio::awaitable<qapi::result<void>> remove_persistent_bitmap(const std::string& name) override;
    /// reopen_read_only (reopen.cpp), QEMU's qcow2_reopen_bitmaps_ro/_rw: before a writable
    /// node turns read-only its bitmaps are written back (in use cleared); after it turned
    /// writable they are marked in use on disk, so writes never go unrecorded by a bitmap
    /// that the image calls consistent. Turning read-only also trims the grown-ahead tail.
    asio::awaitable<result<void>> reopen_bitmaps(bool read_only);

protected:
    asio::awaitable<result<void>> do_read(std::uint64_t offset, std::span<std::byte> buf) override;
    asio::awaitable<result<void>> do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) override;
    /// compress.cpp: deflates each cluster, writes those that shrink compressed, the others as
    /// they are.
    asio::awaitable<result<void>> do_write_compressed(std::uint64_t offset, std::span<const std::byte> buf) override;
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t offset, std::uint64_t length, zero_flags flags) override;
    asio::awaitable<result<void>> do_discard(std::uint64_t offset, std::uint64_t length) override;
    asio::awaitable<result<void>> do_flush() override;
    asio::awaitable<result<extent>> do_block_status(std::uint64_t offset, std::uint64_t length) override;
    std::optional<std::string> cannot_resize() const override { return std::nullopt; }
    asio::awaitable<qapi::result<void>> do_resize(std::uint64_t size) override;

private:
    node* file() const noexcept { return child("file"); }

    // ---- bitmaps.cpp ----
    /// Loads the bitmaps the image stores; a writable node marks them in use on disk
    /// (QEMU's qcow2_load_dirty_bitmaps). Open-time errors are one phrase.
    asio::awaitable<qapi::result<void>> load_bitmaps();
    /// Writes every persistent bitmap (not in use) and a new directory, points the header at
    /// them, then frees what the old directory used. Caller holds `meta_`.
    asio::awaitable<result<void>> store_bitmaps_locked(bool closing);
    /// Rewrites the header cluster with the bitmaps extension for `nb` entries (none: no
    /// extension, autoclear bit cleared), keeping the other extensions.
    asio::awaitable<result<void>> write_bitmaps_header_locked(std::uint32_t nb, std::uint64_t dir_size,
                                                              std::uint64_t dir_offset);
    /// Frees the clusters of directory entry `e` (its table and data clusters).
    asio::awaitable<result<void>> free_bitmap_clusters_locked(const bitmap_dir_entry& e);

    // ---- resize.cpp ----
    /// Replaces the L1 table by one of `entries` entries (more than it has) at a new place:
    /// the new table and its refcounts are durable before the header points at it, and the
    /// old one is freed after (QEMU's qcow2_grow_l1_table order). Caller holds `meta_`.
    asio::awaitable<result<void>> grow_l1_locked(std::uint64_t entries);
    /// Drops the L2 tables of L1 entries from `entries` on and what they reference (their
    /// entries cleared on disk first); the table keeps its size. Caller holds `meta_`.
    asio::awaitable<result<void>> shrink_l1_locked(std::uint64_t entries);
    /// Frees the clusters that map guest bytes from `from` (cluster aligned) to the end of
    /// the image. Caller holds `meta_`.
    asio::awaitable<result<void>> discard_tail_locked(std::uint64_t from);
    /// Cuts the file after its last cluster in use (advisory: failures are only logged).
    asio::awaitable<void> trim_file_locked();

    // ---- node.cpp: mapping and reading ----
    /// Decodes and checks an L2 entry (EIO for corrupt entries, logged).
    result<mapping> decode(std::uint64_t entry, std::uint64_t guest) const;
    /// The run starting at `offset` (≤ `length` bytes). Caller holds `meta_`.
    asio::awaitable<result<run>> lookup_locked(std::uint64_t offset, std::uint64_t length);
    /// Fills `buf` with the guest bytes at `offset` as mapped by `m` (one run).
    asio::awaitable<result<void>> read_mapped(const mapping& m, std::uint64_t offset, std::span<std::byte> buf);
    asio::awaitable<result<void>> read_backing(std::uint64_t offset, std::span<std::byte> buf);
    asio::awaitable<result<void>> read_compressed(const mapping& m, std::span<std::byte> cluster);

    // ---- compress.cpp ----
    /// Stores `data` (deflated, < one cluster) as guest cluster `guest`, which must not
    /// reference host bytes yet (EIO).
    asio::awaitable<result<void>> write_compressed_cluster(std::uint64_t guest, std::span<const std::byte> data);
    /// `len` bytes for compressed data with one more reference counted on the host cluster
    /// they lie in: after the last ones when they fit there, else a new cluster. Caller
    /// holds `meta_`.
    asio::awaitable<result<std::uint64_t>> alloc_compressed_bytes_locked(std::uint64_t len);

    // ---- write.cpp ----
    /// A write split into pieces that go to clusters the image already owns and runs of newly
    /// allocated clusters (copy-on-write fills their head and tail from the old contents).
    struct write_plan {
        struct in_place {
            std::uint64_t host;
            std::span<const std::byte> data;
        };
        struct alloc {
            std::uint64_t first_guest;   ///< cluster aligned
            std::uint64_t n;             ///< clusters
            std::uint64_t host;          ///< first of `n` contiguous new clusters
            std::uint64_t data_off;      ///< guest offset of data[0]
            std::span<const std::byte> data;
            std::vector<mapping> olds;   ///< what the guest clusters mapped to before
        };
        std::vector<in_place> places;
        std::vector<alloc> allocs;
    };
    /// Maps [offset, offset+buf) and reserves clusters for what is not writable in place.
    asio::awaitable<result<void>> plan_write_locked(std::uint64_t offset, std::span<const std::byte> buf,
                                                    write_plan& plan);
    /// Writes the data (no lock needed: the plan's clusters belong to it).
    asio::awaitable<result<void>> execute(const write_plan& plan);
    /// Links the new clusters into the L2 tables (ok) or gives them back (failure).
    asio::awaitable<result<void>> commit_locked(const write_plan& plan, bool ok);
    /// plan + execute + commit, all under `meta_` (write-zeroes' partial clusters).
    asio::awaitable<result<void>> write_locked(std::uint64_t offset, std::span<const std::byte> buf);
    /// Waits until no allocating write in flight overlaps [offset, offset+length); returns
    /// with `meta_` held by `g`.
    asio::awaitable<void> wait_allocations(co_mutex::guard& g, std::uint64_t offset, std::uint64_t length);
    bool overlaps_allocation(std::uint64_t offset, std::uint64_t length) const;
    /// Rewrites L2 entries of whole clusters [offset, offset+length) with `entry_for`.
    enum class clear_mode { zero_keep, zero_unmap, discard, deallocate };
    asio::awaitable<result<void>> clear_clusters_locked(std::uint64_t offset, std::uint64_t length, clear_mode mode);
    /// Whether the guest cluster containing `offset` reads as zeroes without allocating.
    asio::awaitable<result<bool>> reads_as_zero_locked(std::uint64_t offset);

    // ---- meta.cpp ----
    /// The L2 table for L1 index `l1i`, or null if unallocated and !create. With `create` the
    /// caller means to change it: a missing table is allocated, and one shared with an
    /// internal snapshot (L1 entry without OFLAG_COPIED, refcount > 1) is copied first
    /// (copy_l2_locked). Without `create` the table must not be changed. Caller holds `meta_`.
    asio::awaitable<result<std::shared_ptr<l2_table>>> get_l2(std::uint64_t l1i, bool create);
    /// Gives L1 entry `l1i` its own copy of the table it shares with a snapshot.
    asio::awaitable<result<std::shared_ptr<l2_table>>> copy_l2_locked(std::uint64_t l1i);
    /// The L2 table at host offset `off` (cache, dirty tables, then the file).
    asio::awaitable<result<std::shared_ptr<l2_table>>> load_l2(std::uint64_t off);
    std::uint64_t l2_offset(std::uint64_t l1i) const noexcept { return l1_[l1i] & offset_mask; }
    void mark_dirty(std::uint64_t l2_off, const std::shared_ptr<l2_table>& t) { dirty_l2_[l2_off] = t; }
    /// Writes the dirty metadata back in crash-safe order and applies the pending frees (see
    /// the file comment); ends with the file flushed. Caller holds `meta_`.
    asio::awaitable<result<void>> flush_metadata_locked();
    /// Writes the dirty refcount blocks (no flush).
    asio::awaitable<result<void>> write_refblocks();
    /// Flushes when more tables are dirty than the caches hold.
    asio::awaitable<result<void>> bound_dirty_locked();
    asio::awaitable<result<std::uint64_t>> get_refcount(std::uint64_t cluster_index);
    /// Adds `delta` to the refcount of every cluster overlapping [off, off+len).
    asio::awaitable<result<void>> update_refcounts(std::uint64_t off, std::uint64_t len, std::int64_t delta);
    /// `n` contiguous fresh clusters with refcount 1 (durable unless cache.no-flush).
    /// With `got`, takes the first free run even if shorter (at least 1 cluster) and stores
    /// its length there, so fragmented free space is reused rather than the file grown.
    asio::awaitable<result<std::uint64_t>> alloc_clusters(std::uint64_t n, std::uint64_t* got = nullptr);
    asio::awaitable<result<std::shared_ptr<refblock>>> get_refblock(std::uint64_t table_index, bool create);
    asio::awaitable<result<void>> grow_reftable(std::uint64_t min_entries);
    /// Finds `n` contiguous clusters with refcount 0 that are not held back (first fit from
    /// `free_hint_`, which moves past them); grows the file to cover them. The caller sets
    /// their refcounts before anything can lower the hint again.
    asio::awaitable<result<std::uint64_t>> reserve(std::uint64_t n, std::uint64_t* got = nullptr);
    /// Makes the file at least `end` bytes long, growing it ahead (see grown_ahead_).
    asio::awaitable<result<void>> grow_file(std::uint64_t end);
    /// Cuts off the tail that grow_file added and no cluster came to use (close, read-only).
    asio::awaitable<void> trim_grown_locked();
    /// Drops host clusters no longer referenced, after their refcount went to 0.
    asio::awaitable<void> release_host(std::uint64_t off, std::uint64_t len);
    /// Makes held-back clusters that no in-flight request can still touch available again.
    void reclaim();
    /// Repairs the refcounts of an image left dirty by lazy refcounts (opening it read/write),
    /// then clears the dirty bit: every cluster the image references gets at least that many
    /// references counted; leaks stay. Images with internal snapshots are refused.
    asio::awaitable<result<void>> repair_dirty(std::string& error);

public:
    /// Keeps clusters freed after a mapping was looked up out of reuse until the request that
    /// uses the mapping (without `meta_`) is done. Take it while holding `meta_`.
    class io_pin {
    public:
        explicit io_pin(qcow2_node* n) : n_(n), gen_(n->free_gen_) { ++n_->inflight_[gen_]; }
        io_pin(io_pin&& o) noexcept : n_(std::exchange(o.n_, nullptr)), gen_(o.gen_) {}
        io_pin& operator=(io_pin&&) = delete;
        ~io_pin()
        {
            if (n_)
                if (auto it = n_->inflight_.find(gen_); it != n_->inflight_.end() && --it->second == 0)
                    n_->inflight_.erase(it);
        }

    private:
        qcow2_node* n_;
        std::uint64_t gen_;
    };

private:
    std::error_code corrupt(const std::string& what) const;
    /// `bytes` of L2 cache; 0: enough to map the whole image, at most 32 MiB (QEMU's default).
    void size_l2_cache(std::uint64_t bytes);

    header h_;
    qcow2_image_info info_;
    std::string auto_backing_file_;
    std::uint64_t cs_;
    std::uint64_t l2_entries_;            ///< entries per L2 table
    std::uint64_t rb_entries_;            ///< refcount entries per refcount block
    std::vector<std::uint64_t> l1_;       ///< host byte order
    std::vector<std::uint64_t> reftable_;
    std::uint64_t reftable_offset_ = 0;   ///< where reftable_ lives on disk
    std::uint64_t free_hint_ = 0;         ///< no cluster below this index is free for reuse
    struct held {
        std::uint64_t end;                ///< cluster index past the range
        std::uint64_t gen;                ///< free generation of the free that produced it
    };
    std::map<std::uint64_t, held> held_;  ///< freed cluster ranges not yet reusable, by start
    std::uint64_t free_gen_ = 0;          ///< counts frees (batches)
    std::map<std::uint64_t, std::uint64_t> inflight_;   ///< free generation -> pinned requests
    std::map<std::uint64_t, std::shared_ptr<l2_table>> dirty_l2_;   ///< by host offset
    std::map<std::uint64_t, std::shared_ptr<refblock>> dirty_rb_;   ///< by host offset
    std::set<std::uint64_t> dirty_l1_;                              ///< L1 indices
    /// Host ranges no L2 entry (in memory) references any more; decremented once that is durable.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> pending_free_;
    /// Guest cluster ranges [first, end) of allocating writes in flight, and who waits for them.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> allocating_;
    std::vector<std::shared_ptr<asio::steady_timer>> alloc_waiters_;
    bool growing_reftable_ = false;
    lru_cache<l2_table> l2_cache_;
    bool l2_cache_auto_ = true;   ///< sized from the image size (again after a resize)
    lru_cache<refblock> rb_cache_;
    co_mutex meta_;
    // Persistent bitmaps: the directory as the file holds it now, and entries that were in
    // use when the image was opened (left by a crash: inconsistent), kept as they are.
    std::vector<bitmap_dir_entry> stored_;
    std::uint64_t stored_dir_offset_ = 0;
    std::uint64_t stored_dir_size_ = 0;
    std::vector<bitmap_dir_entry> carried_;
    bool bitmaps_closed_ = false;   ///< written back at close: nothing more to do
    /// bitmaps.cpp: persistent bitmaps still to be written back at close.
    bool bitmaps_to_store() const noexcept;
    /// The file was grown past its last allocated cluster (grow_file): trim it at close.
    bool grown_ahead_ = false;
    /// Where the next compressed cluster's bytes may go (inside a host cluster), 0 when none.
    std::uint64_t free_byte_ = 0;
};

} // namespace bjd::block::qcow2
