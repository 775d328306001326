// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Block drivers, implementer side.
///
/// A driver is a subclass of `bjd::block::node` that implements the protected `do_*` hooks.
/// The node wrappers have already checked the request (range, read-only, open) and apply the
/// common policies (discard=ignore, detect-zeroes, write-zeroes emulation) before a hook runs,
/// and tell write observers afterwards. Hooks run on the main loop.
///
/// Capabilities are declared by what the hooks return: ENOTSUP from `do_write_zeroes` makes the
/// layer write zero buffers (unless the caller asked for no fallback); ENOTSUP from
/// `do_discard` makes discard a successful no-op.
#include "bjd/block/node.hpp"
#include "bjd/io/engine.hpp"
#include "bjd/qapi/error.hpp"

#include <boost/json/object.hpp>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace bjd::qapi {
struct blockdev_options_blkdebug;
struct blockdev_options_rbd;
}
namespace bjd::crypto { class registry; }

namespace bjd::crypto { class tls_creds; }

namespace bjd::block {

/// file: a host file or block device.
struct file_open_options {
    std::string filename;
    bool use_uring = true;        ///< aio=io_uring (else the thread-pool engine)
    bool locking = true;          ///< locking=on|auto: OFD byte locks compatible with QEMU
};

/// Opens a file node. Errors: "Could not open 'F': <strerror>", "Failed to get \"write\" lock",
/// "Failed to get shared \"write\" lock" (another process, QEMU included, holds the image).
qapi::result<std::shared_ptr<node>> open_file(node_options common, const file_open_options& fo, io::engine& engine);

/// raw: a window [offset, offset+size) of its `file` child.
qapi::result<std::shared_ptr<node>> open_raw(node_options common, std::shared_ptr<node> file,
                                            std::uint64_t offset, std::optional<std::uint64_t> size);

/// blkdebug: passes every request to `image`, failing those its inject-error rules match
/// (QEMU 7.2's rules and errors: "Could not read blkdebug config file: …", "Cannot meet
/// constraints with align N", …). See drivers/blkdebug.cpp for how events fire.
qapi::result<std::shared_ptr<node>> open_blkdebug(node_options common, std::shared_ptr<node> image,
                                                 const qapi::blockdev_options_blkdebug& opts);

/// Where an NBD server listens (BlockdevOptionsNbd's server): a UNIX socket or host:port.
struct nbd_server_address {
    bool unix_socket = true;
    std::string path;           ///< unix
    std::string host, port;     ///< inet
    /// The address as QEMU's connect errors name it: the path, or "host:port".
    std::string describe() const { return unix_socket ? path : host + ":" + port; }
};

struct nbd_open_options {
    nbd_server_address server;
    std::string export_name;          ///< "" is the server's default export
    std::uint32_t reconnect_delay = 0;   ///< seconds requests wait for a reconnect
    std::uint32_t open_timeout = 0;      ///< seconds to keep trying to connect at open
    /// tls-creds (a client endpoint's): NBD_OPT_STARTTLS first, then everything over TLS.
    std::shared_ptr<const crypto::tls_creds> tls_creds;
    /// Checked against the server's x509 certificate: tls-hostname, else the inet host.
    std::string tls_hostname;
    /// x-dirty-bitmap: the metadata context block status reports instead of base:allocation.
    std::string meta_context;
    /// multi-conn: up to this many connections when the server allows several.
    std::uint32_t connections = 4;
};

/// nbd: a client of an NBD export (lib/block/src/drivers/nbd). Connects and negotiates
/// before it returns. Errors in QEMU 7.2's words: "Failed to connect to 'PATH': No such file
/// or directory", "Requested export not available", "Could not open image: Permission
/// denied" (a read-only export for a writable node without auto-read-only), "Server don't
/// support STARTTLS option", "Certificate does not match the hostname H". Must be awaited
/// on the node's loop.
asio::awaitable<qapi::result<std::shared_ptr<node>>> open_nbd(node_options common, nbd_open_options opts);

/// Where an RBD image is and how to reach its cluster (BlockdevOptionsRbd, looked up).
struct rbd_open_options {
    std::string pool;
    std::string ns;                              ///< RADOS namespace, "" for the default one
    std::string image;
    std::string snapshot;                        ///< "" for the image itself
    std::optional<std::string> conf;             ///< absent: Ceph's default search path
    std::optional<std::string> user;             ///< absent: librados' default ("admin")
    std::optional<std::string> key;              ///< the cephx key (base64), from a secret object
    std::vector<std::string> auth_client_required;   ///< "cephx", "none"
    std::vector<std::pair<std::string, std::string>> servers;   ///< monitors: host, port
    /// The options QEMU shows in the node's "json:{…}" filename (its strong runtime options).
    boost::json::object shown;
};

/// BlockdevOptionsRbd as `open_rbd` takes it: the key-secret looked up in `objects` ("No
/// secret with id 'S'", "Object with id 'S' is not a secret"); encrypt is refused ("RBD image
/// encryption is not supported by blockjobd's rbd driver") once its secret was found.
qapi::result<rbd_open_options> rbd_options(const qapi::blockdev_options_rbd& o, const crypto::registry* objects);

/// rbd: an image of a Ceph cluster through librbd (lib/block/src/drivers/rbd). Connecting and
/// opening run on a worker thread; data requests use librbd's AIO, completed into the loop.
/// Errors in QEMU 7.2's words: "error connecting: Permission denied", "error opening pool P:
/// No such file or directory", "namespace 'N' does not exist", "error reading header from I:
/// No such file or directory", "error reading conf file F: …", "rbd snapshots are always
/// read-only". Must be awaited on the node's loop.
asio::awaitable<qapi::result<std::shared_ptr<node>>> open_rbd(node_options common, rbd_open_options opts);

/// blockdev-create driver=rbd (QEMU 7.2's qemu_rbd_do_create): rbd_create with the cluster's
/// default features; `object_size` 0 is the cluster's default. Errors: "Can't use snapshot
/// name for image creation", "obj size needs to be power of 2", "obj size too small", the
/// connection errors of `open_rbd`, "error rbd create: <strerror>".
asio::awaitable<qapi::result<void>> create_rbd(const rbd_open_options& where, std::uint64_t size,
                                               std::uint64_t object_size);

/// null-co / null-aio: discards writes; reads return zeroes. `latency_ns` delays every request.
std::shared_ptr<node> open_null(node_options common, std::string_view driver, std::uint64_t size,
                                std::uint64_t latency_ns, bool read_zeroes);

/// qcow2 tuning (BlockdevOptionsQcow2's cache options). 0 picks the default.
struct qcow2_open_options {
    std::uint64_t l2_cache_bytes = 0;        ///< default: enough L2 tables for the whole image, ≤ 32 MiB
    std::uint64_t refcount_cache_bytes = 0;  ///< default: 1 MiB (at least 4 refcount blocks)
};

/// What query-named-block-nodes and the chain opener need from a qcow2 header.
struct qcow2_image_info {
    std::uint32_t version = 3;           ///< 2 (compat 0.10) or 3 (compat 1.1)
    std::string backing_file;            ///< as stored in the header, "" when none
    std::string backing_format;          ///< header extension, "" when absent
    bool lazy_refcounts = false;
    bool corrupt = false;
    unsigned refcount_bits = 16;
    std::uint32_t nb_snapshots = 0;
};

/// A bitmap a qcow2 image stores, as its bitmap directory holds it now.
struct qcow2_stored_bitmap {
    std::string name;
    std::uint32_t granularity = 0;
    bool in_use = false;        ///< the in-use flag: open read-write, or left so by a crash
    bool auto_enable = false;   ///< the auto flag: enabled when loaded
};

/// The bitmaps a qcow2 node's image stores, in directory order (QEMU's
/// qcow2_get_bitmap_info_list); empty for other nodes.
std::vector<qcow2_stored_bitmap> qcow2_stored_bitmaps(const node& n);

/// qcow2 (versions 2 and 3) over its `file` child. Reads the header, L1 and refcount tables
/// (everything from the image is validated; bogus offsets, oversized tables and unknown
/// incompatible features are refused with one-phrase errors such as "Image is not in qcow2
/// format" or "Unsupported qcow2 feature(s): …"). The backing file named in the header is NOT
/// opened here: the caller opens it (or not) and attaches it with `set_qcow2_backing`.
/// Must be awaited on the node's loop.
asio::awaitable<qapi::result<std::shared_ptr<node>>> open_qcow2(node_options common, std::shared_ptr<node> file,
                                                                 qcow2_open_options opts);

/// Attaches `backing` as the "backing" child of a qcow2 node made by `open_qcow2`, before
/// anyone reads the node (opening, snapshots), or detaches it when `backing` is null.
/// Error if `image` is not qcow2, already has a backing child, or a permission conflict.
qapi::result<void> set_qcow2_backing(node& image, std::shared_ptr<node> backing);

/// After `set_qcow2_backing` with the image the header names, opened from that name: the
/// header's name counts as the backing image's file name (QEMU's auto_backing_file), so a
/// relative name in the header does not make the node's filename a json: one.
void note_backing_from_header(node& image);

// ---- default child permissions (QEMU's bdrv_default_perms) --------------------------------------

/// A filter's child, and raw's file without offset or size: the same as the parents.
perm_pair filter_child_perms(perm_pair cumulative) noexcept;
/// A COW backing child: read it consistently if the parents do; nobody may write it unless
/// the parents share writing.
perm_pair cow_child_perms(perm_pair cumulative) noexcept;
/// The file under a format. `metadata`: the format keeps metadata there, so a `writable`
/// node writes and resizes it even without parents, and nobody else may write or resize it
/// (qcow2). Without metadata (raw with offset or size), nobody else may resize it and a
/// writer may grow it.
perm_pair storage_child_perms(perm_pair cumulative, bool metadata, bool writable) noexcept;

/// The header facts of a qcow2 node, or null for other drivers.
const qcow2_image_info* qcow2_info(const node& n) noexcept;

/// Format probing for images opened without a format: "qcow2" when `file` starts with the
/// qcow2 magic, else "raw". Errors: the read's errno text.
asio::awaitable<qapi::result<std::string>> probe_format(node& file);

} // namespace bjd::block
