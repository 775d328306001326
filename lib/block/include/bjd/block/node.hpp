// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Block nodes, consumer side: what exports, jobs and QMP commands use.
///
/// A node is one vertex of the block graph: a driver instance (file, raw, null-co, qcow2,
/// mirror_top, …) with a node-name and child edges ("file", "backing", "target"). Every node
/// belongs to the main event loop; all calls below must be made on that loop's thread.
///
/// Data-path calls are coroutines. Each checks its contract at entry (node open, range inside
/// the node, writable for writes) and fails with EINVAL/ERANGE-like errnos rather than
/// asserting, because the ranges come from clients (NBD). Every write-type request (write,
/// write_zeroes, discard) that reaches a node is reported to its write observers when it
/// finishes, whichever path it came from — that is what keeps mirror dirty bitmaps honest —
/// and checked against the node's write threshold before it starts (QEMU's order).
#include "bjd/qapi/error.hpp"
#include "bjd/result.hpp"
#include "bjd/stats/block_acct.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::block {

namespace asio = boost::asio;

class node;
class edge;
class perm_update;
class named_bitmap;

/// Allocation status of a range, as NBD base:allocation and mirror's sync modes need it.
enum status_flag : unsigned {
    status_data = 1u << 0,        ///< reads return data stored at this layer or below
    status_zero = 1u << 1,        ///< reads return zeroes
    status_allocated = 1u << 2,   ///< this layer (not a backing file) decides the content
};

struct extent {
    unsigned flags = 0;           ///< status_flag bits
    std::uint64_t length = 0;     ///< > 0; may be shorter than asked, never longer
};

/// How a network node reaches its server (query-named-block-nodes' `connection`).
struct connection_info {
    std::string state;             ///< connected, reconnecting, disconnected, closed
    std::string server;            ///< a unix socket's path or "host:port"
    int connections = 0;           ///< in use: several with multi-conn, 0 unless connected
    bool tls = false;
    std::uint64_t reconnects = 0;  ///< connections made again after a break
};

struct zero_flags {
    bool may_unmap = false;       ///< holes are acceptable (NBD: !NO_HOLE; QEMU BDRV_REQ_MAY_UNMAP)
    bool no_fallback = false;     ///< fail with ENOTSUP rather than write zero buffers (NBD FAST_ZERO)
};

/// What a clone shares extents of (`node::clone_from`): a file descriptor and an offset in it.
struct clone_source {
    int fd = -1;
    std::uint64_t offset = 0;
};

/// A dirty bitmap as query-named-block-nodes shows it (QEMU's BlockDirtyInfo).
struct dirty_bitmap_info {
    std::optional<std::string> name;   ///< absent for a job's own bitmap
    std::uint64_t count = 0;           ///< dirty bytes
    std::uint32_t granularity = 0;     ///< bytes per bit
    bool recording = true;
    bool busy = false;
    bool persistent = false;
    bool inconsistent = false;         ///< loaded from an image that was not closed cleanly
};

/// Told about every finished write-type request on the node it is attached to.
/// Called on the main loop, after the request completed (successfully or not).
class write_observer {
public:
    virtual ~write_observer() = default;
    virtual void on_write(std::uint64_t offset, std::uint64_t length) = 0;
    /// Observers that are dirty bitmaps (a mirror's) describe themselves for queries.
    virtual std::optional<dirty_bitmap_info> bitmap_info() const { return std::nullopt; }
};

/// Told before every write-type request on the node it is attached to is carried out, and
/// after it finished (successfully or not): a mirror's write-intent log (docs/job-state.md)
/// makes the request's area durable there before the data may change. Main loop only.
/// `enter` returns true when the request may go on at once; otherwise the node awaits
/// `wait` first. Every `enter` is followed by exactly one `leave` with the same range, after
/// the write observers were told, so that a request is never out of the hook without having
/// marked its observers' bitmaps.
class write_intent_hook {
public:
    virtual ~write_intent_hook() = default;
    virtual bool enter(std::uint64_t offset, std::uint64_t length) = 0;
    virtual asio::awaitable<void> wait(std::uint64_t offset, std::uint64_t length) = 0;
    virtual void leave(std::uint64_t offset, std::uint64_t length) = 0;
};

/// Options every node has (BlockdevOptions' common members).
struct node_options {
    std::string name;
    bool read_only = false;
    bool auto_read_only = false;   ///< file: open read-only, reopen read-write when a writer attaches
    bool cache_direct = false;     ///< cache.direct: O_DIRECT, bypass the host page cache
    bool cache_no_flush = false;   ///< cache.no-flush: flush() succeeds without syncing
    bool discard_unmap = false;    ///< discard=unmap: pass discards down (else they are ignored)
    bool force_share = false;      ///< force-share: parents share every permission on this node
    enum class detect_zeroes { off, on, unmap } zeroes = detect_zeroes::off;
};

/// Permissions a parent takes on a node through its edge, and the ones it lets other users
/// take (QEMU's BLK_PERM_*; the bit numbers are QEMU's, since file nodes turn them into OFD
/// lock bytes that QEMU processes read).
enum perm : unsigned {
    perm_consistent_read = 1u << 0,
    perm_write = 1u << 1,
    perm_write_unchanged = 1u << 2,
    perm_resize = 1u << 3,
    perm_all = 0xfu,
};

/// What a user takes (`perm`) and what it lets every other user of the node take (`shared`).
struct perm_pair {
    unsigned perm = 0;
    unsigned shared = perm_all;
    friend bool operator==(const perm_pair&, const perm_pair&) = default;
};

/// Operations that blockers may forbid (QEMU's BlockOpType, the ones whose blockers differ).
enum class block_op {
    other,           ///< blockdev-del, snapshots, mirror source, resize, media changes
    stream,          ///< block-stream on a node of the chain
    commit_target,   ///< the base of block-commit
    backup_source,
    backup_target,
};

/// "consistent read, write", QEMU's bdrv_perm_names.
std::string perm_names(unsigned perm);

/// Who holds an edge to a node: another node, a named drive, an export, a job (the nodes it
/// works on: QEMU's job children, which block other jobs), or an anonymous user doing I/O for
/// a job or a command (the mirror's writes to its target, blockdev-create, block_resize:
/// QEMU's anonymous BlockBackends).
enum class parent_kind { node, backend, export_, job, anonymous };

/// A reference from a parent to a node, with the permissions the parent takes through it.
/// The parent owns the edge; the edge keeps the node alive and registers itself with it, so
/// that `replace_node` can redirect every parent of a node to another node (mirror's pivot).
///
/// Permissions follow QEMU 7.2's model (block.c, bdrv_refresh_perms): every change (new
/// permissions, attaching, replacing) recomputes what each node below holds, checks that no
/// user of a node takes what another user does not share, lets drivers prepare (a file node
/// reopens an auto-read-only file, checks image locks), and then commits everywhere or rolls
/// back everywhere. On failure the graph, the edges' permissions, the open files and the
/// locks are exactly as before.
class edge {
public:
    edge(parent_kind kind, std::string owner, std::string role);
    ~edge();
    edge(const edge&) = delete;
    edge& operator=(const edge&) = delete;

    /// Points the edge at `n` (null detaches), keeping this edge's permissions, which `n` must
    /// grant: on a conflict nothing changes and the error says why. The old node gives up
    /// what this edge held. An edge that takes nothing (perm 0, sharing all) always attaches.
    qapi::result<void> attach(std::shared_ptr<node> n);
    /// Lets the node go. Giving up permissions never fails.
    void detach();

    /// Takes `perm` on the node while letting others take only `shared`, down the whole
    /// subtree (a file node turns them into image locks). On failure nothing changes and the
    /// error says why: "Failed to get \"write\" lock", "Block node is read-only",
    /// "Permission conflict on node 'x': …".
    qapi::result<void> set_perms(unsigned perm, unsigned shared);
    unsigned perm() const noexcept { return perms_.perm; }
    unsigned shared_perm() const noexcept { return perms_.shared; }
    perm_pair perms() const noexcept { return perms_; }

    node* get() const noexcept { return node_.get(); }
    const std::shared_ptr<node>& shared() const noexcept { return node_; }
    node* operator->() const noexcept { return node_.get(); }
    explicit operator bool() const noexcept { return bool(node_); }

    parent_kind kind() const noexcept { return kind_; }
    /// The node whose child this edge is (`node::add_child`), null for other parents.
    node* parent_node() const noexcept { return parent_node_; }
    const std::string& owner() const noexcept { return owner_; }   ///< "node 'x'", "export 'e1'", "block job 'j'"
    const std::string& role() const noexcept { return role_; }     ///< "file", "backing", "root", "target"
    /// The user as QEMU's permission errors name it: the owner for nodes ("node 'x'"), drives
    /// ("block device 'd'") and jobs ("mirror job 'j'"), and "an unnamed block device" for
    /// exports and anonymous users, which QEMU serves through anonymous BlockBackends.
    std::string user_desc() const;
    /// The child name in those errors: the role for node and job parents ("file", "main
    /// node"), "root" for the BlockBackend-like others.
    std::string_view child_name() const noexcept;

private:
    friend class node;
    friend class perm_update;
    parent_kind kind_;
    std::string owner_;
    std::string role_;
    std::shared_ptr<node> node_;
    node* parent_node_ = nullptr;
    perm_pair perms_;
};

/// Redirects every parent edge of `from` to `to`, except edges owned by `to` itself (so a
/// filter or an overlay above `from` keeps pointing at it) and jobs' edges (a job keeps
/// working on the nodes it chose: QEMU's stay_at_node), and recomputes the permissions of
/// both. On a conflict at `to` nothing changes and the error says why. Used by mirror
/// completion and snapshots.
qapi::result<void> replace_node(node& from, const std::shared_ptr<node>& to);

/// Takes a filter (a job's mirror_top or copy-on-read) out of the graph, QEMU's
/// bdrv_drop_filter: every parent of `filter` moves to the node it filters, keeping what it
/// took through the filter, and the filter then lets go of its children. On a conflict
/// nothing changes.
qapi::result<void> drop_filter(node& filter);

class node : public std::enable_shared_from_this<node> {
public:
    virtual ~node();
    node(const node&) = delete;
    node& operator=(const node&) = delete;

    // ---- identity -------------------------------------------------------------------------
    const std::string& name() const noexcept { return opts_.name; }
    /// Names given by the daemon ("#block123") rather than the user.
    bool auto_named() const noexcept { return !opts_.name.empty() && opts_.name[0] == '#'; }
    /// The wire name of the driver: "file", "raw", "null-co", "qcow2", "mirror_top".
    virtual std::string_view driver() const noexcept = 0;
    /// The file name shown in query-named-block-nodes (`file`, `image.filename`).
    virtual std::string filename() const;
    /// The driver options QEMU's "json:{…}" pseudo-filename shows when a plain file name does
    /// not describe the node (non-default options, a window of a file); nullopt when
    /// `filename()` says it all. See `display_filename` in query.hpp.
    virtual std::optional<boost::json::object> json_options() const { return std::nullopt; }
    /// A network node's connection to its server; nullopt for local nodes.
    virtual std::optional<connection_info> connection() const { return std::nullopt; }
    /// Implicit filters (mirror_top without filter-node-name) are skipped by device views.
    virtual bool implicit() const noexcept { return false; }
    /// The drive whose medium this node is, "" for other nodes (QEMU's bdrv_get_device_name).
    std::string device_name() const;

    // ---- geometry and capabilities -----------------------------------------------------------
    virtual std::uint64_t size() const noexcept = 0;
    /// Bytes allocated on the host for this node (actual-size), if known.
    virtual std::int64_t allocated_size() const { return -1; }
    /// The format's cluster size, 0 for formats without clusters (raw, file, null-co).
    virtual std::uint32_t cluster_size() const noexcept { return 0; }
    /// Requests must be aligned to this (512 or 4096 for O_DIRECT files, else 1).
    virtual std::uint32_t request_alignment() const noexcept { return 1; }
    /// Whether reads of never-written areas return zeroes (a fresh file, null-co read-zeroes).
    virtual bool zero_init() const noexcept { return false; }
    /// The alignment QEMU's block layer pads writes to before they reach this driver (its
    /// bl.request_alignment): a file with cache.direct, whose driver writes unaligned ranges by
    /// read-modify-write. 1 for every other driver, even where `request_alignment()` is larger
    /// (raw forwards its file's). Write thresholds measure the padded ranges, as QEMU's do.
    virtual std::uint32_t write_padding() const noexcept { return 1; }
    /// Whether the driver implements discard (QEMU: has bdrv_co_pdiscard). When it does not
    /// (null-co), discards stop at the node as with discard=ignore.
    virtual bool can_discard() const noexcept { return true; }
    bool read_only() const noexcept { return opts_.read_only; }
    const node_options& options() const noexcept { return opts_; }
    /// Whether the driver writes compressed clusters (`write_compressed`; QEMU's
    /// bdrv_supports_compressed_writes): qcow2. No filter of blockjobd passes them on.
    virtual bool supports_compressed_writes() const noexcept { return false; }

    // ---- data path (main loop; see file comment) ---------------------------------------------
    asio::awaitable<result<void>> read(std::uint64_t offset, std::span<std::byte> buf);
    asio::awaitable<result<void>> write(std::uint64_t offset, std::span<const std::byte> buf, bool fua = false);
    /// A write whose clusters are stored compressed (QEMU's BDRV_REQ_WRITE_COMPRESSED), as a
    /// backup with compress: true writes its target. `offset` is aligned to `cluster_size()`
    /// and the length is a multiple of it or reaches the end of the node (else EINVAL); every
    /// cluster must be unallocated or a plain zero cluster (else EIO: compressed data never
    /// overwrites). ENOTSUP where `supports_compressed_writes()` is false. Otherwise `write`'s
    /// contract: write threshold, detect-zeroes (zeroes are written as zeroes), observers.
    asio::awaitable<result<void>> write_compressed(std::uint64_t offset, std::span<const std::byte> buf);
    asio::awaitable<result<void>> write_zeroes(std::uint64_t offset, std::uint64_t length, zero_flags flags = {});
    asio::awaitable<result<void>> discard(std::uint64_t offset, std::uint64_t length);
    asio::awaitable<result<void>> flush();
    /// Copies `length` bytes at `offset` of this node to `target` at `target_offset` by
    /// sharing the file's extents (a reflink: FICLONERANGE, on XFS, Btrfs and the like): no
    /// data is read or written, and later writes to either file copy on write. Only where
    /// both nodes reach a regular file through raw nodes alone (`can_clone`): ENOTSUP at once
    /// otherwise. The kernel refuses where the file system cannot share extents (EOPNOTSUPP),
    /// across file systems (EXDEV) or off its block size (EINVAL): the caller then reads and
    /// writes. Counted as a read on this node and its file, and as a write on `target` and
    /// its file, with everything a write does there: the write threshold, the write-intent
    /// hook and the write observers (dirty bitmaps, mirrors).
    asio::awaitable<result<void>> clone_to(std::uint64_t offset, std::uint64_t length, node& target,
                                          std::uint64_t target_offset);
    /// The write half of `clone_to`, called by the source's file node with its descriptor.
    /// ENOTSUP on a node with detect-zeroes (a clone cannot look at the data).
    asio::awaitable<result<void>> clone_from(std::uint64_t offset, std::uint64_t length, const clone_source& src);
    /// Whether `clone_to` and `clone_from` may work here: a file node on a regular file, or
    /// a raw node over one. False by default.
    virtual bool can_clone() const noexcept { return false; }
    /// Grows or shrinks the node to `size` bytes (format drivers grow their file child as they
    /// allocate). Errors: EPERM when read-only, ENOTSUP when the driver cannot resize.
    asio::awaitable<result<void>> truncate(std::uint64_t size);
    /// block_resize's resize (QEMU's bdrv_co_truncate without preallocation): `size` already
    /// checked against the block layer's limit and the node writable. Format drivers answer in
    /// QEMU's words ("The new size must be a multiple of 512", "Failed to grow the L1 table:
    /// …"); the rest say "Could not resize file: <strerror>".
    asio::awaitable<qapi::result<void>> resize(std::uint64_t size);
    /// Why the node cannot be resized at all, in QEMU's words ("Image format driver does not
    /// support resize", "Cannot resize fixed-size raw disks"), or nothing when it can try.
    /// Default: filters ask their filtered child; other drivers cannot.
    virtual std::optional<std::string> cannot_resize() const;
    /// Status of the range starting at `offset`; the returned extent covers at least one byte.
    asio::awaitable<result<extent>> block_status(std::uint64_t offset, std::uint64_t length);
    /// The same answer without a coroutine, where the driver has it without waiting: a file
    /// (its cached data region, or lseek), a raw node over one, null-co. Nothing where it
    /// has not (formats, filters, network nodes): then co_await block_status(). For paths that
    /// ask before every request, as a structured NBD READ does: the coroutines of a raw node
    /// over a file were four frames allocated per 4 KiB read.
    std::optional<result<extent>> block_status_now(std::uint64_t offset, std::uint64_t length);

    // ---- graph --------------------------------------------------------------------------------
    /// Child edges in a stable order (file first, then backing, then others).
    const std::vector<std::unique_ptr<edge>>& children() const noexcept { return children_; }
    /// The child with `role`, or null.
    node* child(std::string_view role) const noexcept;
    /// Every edge pointing at this node (parents: nodes, drives, exports, jobs).
    const std::vector<edge*>& parents() const noexcept { return parents_; }
    /// The child that carries the data this node reads (file for raw/qcow2, the filtered node
    /// for filters), or null for protocol nodes.
    virtual node* primary_child() const noexcept;
    /// A filter passes its primary child's data through unchanged (blkdebug, mirror_top):
    /// replacing the filtered node cannot change what readers of the filter see.
    virtual bool is_filter() const noexcept { return false; }
    /// Whether closing the node flushes it first (graph.hpp, "Closing"): a node that keeps
    /// nothing of its own in memory or on disk has nothing to write back. Filters pass flushes
    /// to nodes that are closed, and flushed, on their own; null-co stores nothing (QEMU still
    /// flushes it and waits out latency-ns; blockjobd does not, so quit never hangs on it).
    virtual bool flush_on_close() const noexcept { return !is_filter(); }
    /// Whether a write, write-zeroes, discard or resize completed since the last flush began:
    /// only then does a close need to flush (a mirror flushed its target before it finished).
    bool unflushed() const noexcept { return unflushed_; }
    /// Whether closing the node has work to do besides a flush (a qcow2 image writes its
    /// persistent bitmaps back, QEMU's qcow2_inactivate), even when nothing was written.
    virtual bool close_work() const noexcept { return false; }
    /// That work, done before the close's flush (graph.cpp, flush_before_close).
    virtual asio::awaitable<result<void>> before_close();
    /// The backing node (COW base) or null.
    node* backing() const noexcept { return child("backing"); }

    /// Whether `blockdev-add` created this node (only those may be deleted with blockdev-del).
    bool monitor_owned() const noexcept { return monitor_owned_; }
    void set_monitor_owned(bool v) noexcept { monitor_owned_ = v; }
    /// Called when the last parent edge leaves the node (detached, moved elsewhere), for nodes
    /// that live only as long as someone uses them, as QEMU's reference counts let them go
    /// (graph::close_when_unused). Null: the node stays.
    using unused_hook = std::function<void(node&)>;
    void set_unused_hook(unused_hook h) { unused_hook_ = std::move(h); }

    /// Why a job blocks this node, empty when none ("Node 'X' is busy: …"). A job's blocker
    /// forbids every operation; see `op_blocker` for the whole answer.
    const std::string& blocker() const noexcept { return blocker_; }
    void set_blocker(std::string why) { blocker_ = std::move(why); }
    /// Why `op` may not run on this node now, empty when it may (QEMU's bdrv_op_is_blocked):
    /// a job working on the node forbids everything; a node that is the COW backing child of
    /// another ("node is used as backing hd of 'top'") only lets stream, commit and backup
    /// work on it (QEMU's bdrv_backing_attach).
    std::string op_blocker(block_op op) const;
    /// "Node 'NAME' is busy: …" when `op_blocker(op)` says so; NAME is `shown` when given
    /// (QEMU names the drive a command was given), else the node's name.
    qapi::result<void> check_op(block_op op, std::string_view shown = {}) const;

    // ---- permissions --------------------------------------------------------------------------
    /// Recomputes what this node holds from its parents' edges and what it takes on its
    /// children, down the whole subtree, even when nothing above changed: format nodes call
    /// it once open, since they take permissions on their file without any parent (a
    /// writable qcow2 writes metadata). On failure nothing changes.
    qapi::result<void> refresh_permissions();
    /// What this node currently holds (union of its parents' perms) and shares (intersection).
    unsigned held_perm() const noexcept { return held_.perm; }
    unsigned held_shared() const noexcept { return held_.shared; }
    /// force-share: users of this node's parents' edges let everyone take everything.
    bool force_share() const noexcept { return opts_.force_share; }

    // ---- observers ----------------------------------------------------------------------------
    void add_write_observer(write_observer* o);
    void remove_write_observer(write_observer* o);
    /// Installs (or, with null, removes) the write-intent hook. Requests already past the
    /// hook keep the one they entered.
    void set_write_intent_hook(std::shared_ptr<write_intent_hook> h) { intent_hook_ = std::move(h); }
    /// Write-type requests (write, write_zeroes, discard passed down) between their range check
    /// and their end: a hook installed now can tell whether all of them entered it.
    std::uint64_t writes_in_flight() const noexcept { return writes_in_flight_; }
    /// The dirty bitmaps among the observers, named or a job's, newest first (QEMU's listing
    /// order).
    std::vector<dirty_bitmap_info> dirty_bitmaps() const;

    // ---- named dirty bitmaps (block-dirty-bitmap-*; bitmaps.hpp has the checked commands) ----
    /// The named bitmap called `name`, or null.
    std::shared_ptr<named_bitmap> find_bitmap(std::string_view name) const;
    /// Creates an enabled, empty bitmap of the node's size that records every write-type
    /// request from now on. The caller checked the name (unique) and the granularity.
    std::shared_ptr<named_bitmap> add_bitmap(std::string name, std::uint64_t granularity);
    /// The named bitmaps, oldest first.
    const std::vector<std::shared_ptr<named_bitmap>>& named_bitmaps() const noexcept { return bitmaps_; }
    /// Whether a new persistent bitmap `name` of `granularity` can be stored in this node
    /// (QEMU's bdrv_can_store_new_dirty_bitmap); the default refuses in QEMU's words for
    /// drivers that cannot store bitmaps.
    virtual qapi::result<void> can_store_new_bitmap(const std::string& name, std::uint64_t granularity) const;
    /// A persistent bitmap was removed (block-dirty-bitmap-remove): drivers that store
    /// bitmaps drop it from the image (QEMU's bdrv_co_remove_persistent_dirty_bitmap).
    virtual asio::awaitable<qapi::result<void>> remove_persistent_bitmap(const std::string& name);
    /// Drops a bitmap: it stops recording and leaves queries (a holder may keep the object).
    void remove_bitmap(const named_bitmap& b);
    /// Default granularity of a new bitmap, QEMU's: the cluster size within [4 KiB, 64 KiB],
    /// 64 KiB for nodes without clusters.
    std::uint64_t default_bitmap_granularity() const noexcept;
    /// The COW backing node, as queries show it: none for filters, whose child is the data.
    node* cow_backing() const noexcept { return is_filter() ? nullptr : backing(); }

    // ---- write threshold (block-set-write-threshold) -----------------------------------------
    /// Told that a write-type request crossed the node's write threshold: its end lies
    /// `amount_exceeded` bytes beyond `threshold`. Called on the main loop, before the request
    /// is carried out, with the threshold already disarmed (the hook may arm it again).
    using write_threshold_hook =
        std::function<void(const node& n, std::uint64_t amount_exceeded, std::uint64_t threshold)>;
    /// Arms the write threshold (QEMU's bdrv_write_threshold_set), replacing the armed one;
    /// 0 disarms. The first request whose end lies beyond `threshold` calls `hook` once and
    /// disarms it. Requests that count, once their range check passed: write, write_zeroes
    /// (detect-zeroes and emulation included) and discard when it is passed down
    /// (discard=unmap and `can_discard()`). Their ranges are measured as QEMU 7.2's
    /// bdrv_co_write_req_prepare sees them: writes padded to `write_padding()` (an unaligned
    /// zero-length write is dropped, an aligned one counts at its offset); write-zeroes split
    /// into QEMU's padded head, aligned middle and padded tail (zero-length: nothing), the first
    /// piece ending beyond the threshold counting; discards as given.
    void set_write_threshold(std::uint64_t threshold, write_threshold_hook hook);
    /// The armed threshold, 0 when none (query-named-block-nodes' write_threshold).
    std::uint64_t write_threshold() const noexcept { return threshold_; }

    /// Highest offset+length of any write-type request that reached the node, failed or not.
    std::uint64_t wr_highest_offset() const noexcept { return wr_highest_offset_; }

    /// Accounting of every data-path request on this node (query-blockstats): read, write
    /// (write_zeroes counts as write), discard (unmap), flush; rejected requests are invalid.
    stats::block_acct& acct() noexcept { return acct_; }
    const stats::block_acct& acct() const noexcept { return acct_; }

protected:
    explicit node(node_options opts);
    node(std::string name, bool read_only);

    /// Adds a child edge owned by this node. It takes nothing until `refresh_permissions`.
    edge& add_child(std::string role, std::shared_ptr<node> n);
    /// Drops the child edge with `role`, if any.
    void remove_child(std::string_view role);

    // Driver hooks: called with the contract already checked. Defaults: ENOTSUP for
    // write_zeroes/discard/truncate (the wrapper emulates write_zeroes with zero buffers), a
    // successful no-op flush, and "all data, allocated" for block_status.
    /// What this node takes through `child` when its parents together take and share
    /// `cumulative` (QEMU's bdrv_child_perm). Default: a filter's primary child and a "file"
    /// child get the same (`filter_child_perms`), a "backing" child is only read
    /// (`cow_child_perms`). Formats with metadata override it (`storage_child_perms`).
    virtual perm_pair child_permissions(const edge& child, perm_pair cumulative) const;
    /// The edges the node takes permissions through: its children, unless the node forwards
    /// to an edge it does not own (a named drive's front node and its medium).
    virtual std::vector<edge*> permission_edges() const;
    /// Driver part of a permission change, in two phases: `prepare_permissions` checks and
    /// readies the new state without giving up the old one (file: opens the file again in
    /// the mode needed, takes the new lock bytes besides the old ones, checks for conflicts);
    /// then exactly one of `commit_permissions` (switch over, drop what is no longer needed)
    /// or `abort_permissions` (back to the state before prepare) follows. Commit and abort
    /// cannot fail. Defaults: nothing to do.
    virtual qapi::result<void> prepare_permissions(perm_pair cumulative);
    virtual void commit_permissions();
    virtual void abort_permissions();

    virtual asio::awaitable<result<void>> do_read(std::uint64_t offset, std::span<std::byte> buf) = 0;
    virtual asio::awaitable<result<void>> do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) = 0;
    /// Called for `write_compressed` with the alignment checked. Default: ENOTSUP.
    virtual asio::awaitable<result<void>> do_write_compressed(std::uint64_t offset, std::span<const std::byte> buf);
    virtual asio::awaitable<result<void>> do_write_zeroes(std::uint64_t offset, std::uint64_t length, zero_flags flags);
    virtual asio::awaitable<result<void>> do_discard(std::uint64_t offset, std::uint64_t length);
    virtual asio::awaitable<result<void>> do_flush();
    virtual asio::awaitable<result<extent>> do_block_status(std::uint64_t offset, std::uint64_t length);
    /// block_status_now's driver part, after the range checks. Nothing by default.
    virtual std::optional<result<extent>> do_block_status_now(std::uint64_t offset, std::uint64_t length)
    {
        return std::nullopt;
    }
    /// The driver parts of `clone_to` and `clone_from`, once the requests are checked and
    /// counted. Default: ENOTSUP.
    virtual asio::awaitable<result<void>> do_clone_to(std::uint64_t offset, std::uint64_t length, node& target,
                                                     std::uint64_t target_offset);
    virtual asio::awaitable<result<void>> do_clone_from(std::uint64_t offset, std::uint64_t length,
                                                       const clone_source& src);
    virtual asio::awaitable<result<void>> do_truncate(std::uint64_t size);
    /// The driver part of `resize`. Default: a filter resizes its filtered child; other
    /// drivers truncate (`do_truncate`), an error being "Could not resize file: <strerror>".
    virtual asio::awaitable<qapi::result<void>> do_resize(std::uint64_t size);

private:
    friend class edge;
    friend class perm_update;
    friend struct reopen_access;   // reopen.cpp: changes options of an open node
    friend qapi::result<void> replace_node(node& from, const std::shared_ptr<node>& to);
    result<void> check_request(std::uint64_t offset, std::uint64_t length, bool is_write) const;
    /// `write` and `write_compressed`: one request path.
    asio::awaitable<result<void>> write_request(std::uint64_t offset, std::span<const std::byte> buf, bool fua,
                                                bool compressed);
    void notify_write(std::uint64_t offset, std::uint64_t length);
    /// A write-type request inside the write-intent hook: entered on construction, before the
    /// request is carried out (await `hook->wait` first when `must_wait`), left when the scope
    /// ends, after notify_write, on every path out of the request. Not a coroutine: no frame
    /// on the write path.
    class intent_scope {
    public:
        intent_scope(node& n, std::uint64_t offset, std::uint64_t length);
        ~intent_scope();
        intent_scope(const intent_scope&) = delete;
        intent_scope& operator=(const intent_scope&) = delete;

        std::shared_ptr<write_intent_hook> hook;   ///< the one entered is the one left
        bool must_wait = false;

    private:
        node& n_;
        std::uint64_t offset_, length_;
    };
    /// Runs the unused hook if the node has no parent left.
    void check_unused();
    /// Fires and disarms the write threshold if `end` lies beyond it.
    void check_write_threshold(std::uint64_t end);
    asio::awaitable<result<void>> emulate_write_zeroes(std::uint64_t offset, std::uint64_t length);

    node_options opts_;
    bool monitor_owned_ = false;
    std::string blocker_;
    unused_hook unused_hook_;
    std::vector<std::unique_ptr<edge>> children_;
    std::vector<edge*> parents_;
    std::vector<write_observer*> observers_;
    std::shared_ptr<write_intent_hook> intent_hook_;
    std::uint64_t writes_in_flight_ = 0;
    std::vector<std::shared_ptr<named_bitmap>> bitmaps_;   ///< also in observers_
    std::uint64_t wr_highest_offset_ = 0;
    std::uint64_t threshold_ = 0;             ///< armed write threshold, 0 when none
    write_threshold_hook threshold_hook_;     ///< told when it is crossed
    bool unflushed_ = false;
    perm_pair held_;   ///< committed cumulative permissions of the parents
    stats::block_acct acct_;
};

} // namespace bjd::block
