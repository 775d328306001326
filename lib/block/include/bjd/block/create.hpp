// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Image creation (blockdev-create, drive-mirror's new targets) and qcow2 header edits
/// (change-backing-file).
///
/// Checks run in QEMU 7.2's order with its texts (file-posix.c raw_co_create, qcow2.c
/// qcow2_co_create). Every coroutine here must be awaited on the main loop; the file
/// creation makes blocking syscalls (open, ftruncate, posix_fallocate) on it, and yields
/// between the zero writes of preallocation=full.
///
/// Images are written in one pass: every metadata cluster (header, refcount table and
/// blocks, L1, and for preallocation the L2 tables) is computed up front by `qcow2_layout`,
/// and the header cluster is written last, so an interrupted creation never leaves a file
/// that opens as a valid qcow2 image with missing metadata.
#include "bjd/block/node.hpp"
#include "bjd/qapi/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace bjd::block {

class graph;

/// PreallocMode.
enum class prealloc_mode { off, metadata, falloc, full };

/// blockdev-create driver=file.
struct file_create_options {
    std::string filename;
    std::uint64_t size = 0;
    prealloc_mode preallocation = prealloc_mode::off;
    bool nocow = false;
    std::optional<std::uint64_t> extent_size_hint;   ///< default 1 MiB; failures are ignored
};

/// Creates (or truncates to 0, then resizes) a host file, taking QEMU's image locks (write
/// and resize, resize not shared) while it works. Errors: "Extent size hint is too large",
/// "Could not create 'F': <errno text>", "Failed to get \"write\" lock" (another user,
/// QEMU included, holds the image), "Unsupported preallocation mode: metadata",
/// "Could not resize file: …", "Could not preallocate new data: …",
/// "Could not write zeros for preallocation: …".
asio::awaitable<qapi::result<void>> create_file(const file_create_options& o);

/// blockdev-create driver=qcow2, defaults applied (absent members keep these values).
struct qcow2_create_options {
    std::uint64_t size = 0;
    unsigned version = 3;                          ///< 2 or 3
    std::optional<std::string> backing_file;
    std::optional<std::string> backing_format;     ///< a BlockdevDriver name
    std::uint64_t cluster_size = 65536;
    prealloc_mode preallocation = prealloc_mode::off;
    bool lazy_refcounts = false;
    std::int64_t refcount_bits = 16;
    bool extended_l2 = false;
    bool zstd = false;                             ///< compression-type=zstd was asked for
};

/// The option checks of qcow2_co_create, in its order: "Image size must be a multiple of 512
/// bytes", the extended-L2 version check, "Cluster size must be a power of two between 512
/// and 2048k", "Backing file and preallocation can only be used at the same time if
/// extended_l2 is on", "Backing format cannot be used without backing file", the
/// lazy-refcount and refcount-width checks, the compression-type version check; then what
/// blockjobd cannot do ("Extended L2 entries are not supported", "Unknown compression
/// type").
qapi::result<void> check_qcow2_create_options(const qcow2_create_options& o);

/// Where everything of a new qcow2 image goes, and the bytes of its metadata. Pure: no I/O.
///
/// Layout (QEMU's for preallocation=off): cluster 0 the header, then the refcount table,
/// the refcount blocks, the L1 table, and with preallocation the L2 tables and the data
/// clusters. Every cluster of the image has refcount 1.
class qcow2_layout {
public:
    /// Plans `o` (which passed `check_qcow2_create_options`). Error: "Could not resize image:
    /// Failed to grow the L1 table: File too large" when the L1 table would exceed 32 MiB,
    /// "Backing file name too long" (> 1023 bytes), "Could not assign backing file 'F' with
    /// format 'B': No space left on device" (the name does not fit in the header cluster).
    static qapi::result<qcow2_layout> plan(const qcow2_create_options& o);

    std::uint64_t cluster_size() const noexcept { return cs_; }
    /// Bytes [0, metadata_end()) hold the header and every table; `render` fills them.
    std::uint64_t metadata_end() const noexcept { return meta_end_; }
    /// The file size of the finished image (≥ metadata_end: preallocated data follows).
    std::uint64_t file_end() const noexcept { return file_end_; }
    /// First byte and length of the preallocated data clusters (0 length without them).
    std::uint64_t data_offset() const noexcept { return data_off_; }
    std::uint64_t data_length() const noexcept { return file_end_ > data_off_ ? file_end_ - data_off_ : 0; }
    std::uint64_t l1_offset() const noexcept { return l1_off_; }
    std::uint64_t l1_entries() const noexcept { return l1_size_; }
    std::uint64_t reftable_offset() const noexcept { return rt_off_; }
    std::uint64_t refblock_count() const noexcept { return rb_count_; }

    /// Writes the metadata bytes at [off, off + out.size()) into `out` (zeroes past
    /// metadata_end()). Any range may be asked for, in any order.
    void render(std::uint64_t off, std::span<std::byte> out) const;

private:
    void render_header(std::span<std::byte> cluster) const;
    std::uint64_t entry_at(std::uint64_t off) const;   ///< the 8-byte table word at `off`

    qcow2_create_options o_;
    std::uint64_t cs_ = 0;
    std::uint64_t clusters_ = 0;      ///< clusters with refcount 1
    std::uint64_t rt_off_ = 0, rt_clusters_ = 0;
    std::uint64_t rb_off_ = 0, rb_count_ = 0;
    std::uint64_t l1_off_ = 0, l1_size_ = 0, l1_clusters_ = 0;
    std::uint64_t l2_off_ = 0, l2_count_ = 0;
    std::uint64_t data_off_ = 0;
    std::uint64_t meta_end_ = 0, file_end_ = 0;
    bool with_features_ = false;      ///< the header carries the feature name table
};

/// Formats `file` (any node; it is overwritten from offset 0, grown as needed, never shrunk)
/// as a qcow2 image, taking write and resize on it for the duration through an edge owned by
/// `owner` ("block job 'c0'"). Errors: the checks above, the permission conflict,
/// "Could not write qcow2 header: …", "Could not resize image: …".
asio::awaitable<qapi::result<void>> format_qcow2(node& file, const qcow2_create_options& o,
                                                 const std::string& owner);

/// For drive-mirror mode=absolute-paths with a qcow2 target: creates the host file `path`
/// (preallocation off, truncating an existing one) and formats it as qcow2 of `size` bytes
/// with `backing_file` / `backing_fmt` in its header (both empty: no backing file).
/// `cluster_size` 0 means 64 KiB. Nothing stays open afterwards. `owner` names the caller in
/// permission errors.
asio::awaitable<qapi::result<void>> create_qcow2(graph& g, const std::string& path, std::uint64_t size,
                                                 const std::string& backing_file, const std::string& backing_fmt,
                                                 std::uint32_t cluster_size = 0,
                                                 const std::string& owner = "drive-mirror");

/// Rewrites the backing file name (and the backing-format extension: `backing_fmt`, or none
/// when empty) in the header of the qcow2 node `image`, keeping every other header
/// extension. Works on read-only nodes too (the header is written through a second,
/// short-lived descriptor, as QEMU's temporary read-write reopen does). The in-memory
/// graph is unchanged; `qcow2_info(image)` reports the new strings. Errors (errno):
/// EINVAL for a name over 1023 bytes, ENOTSUP for non-qcow2 nodes, ENOSPC when the
/// extensions and the name do not fit in the header cluster, the write's errno.
asio::awaitable<result<void>> qcow2_change_backing_file(node& image, const std::string& backing_file,
                                                        const std::string& backing_fmt);

} // namespace bjd::block
