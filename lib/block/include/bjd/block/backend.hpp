// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Named drives (QEMU's named BlockBackends) and their removable media.
///
/// A drive has a name, holds at most one medium (a root node, through an edge of
/// parent_kind::backend, so a mirror pivot redirects it like any other parent) and may be
/// removable, with or without a tray. blockjobd has no guest devices: a drive doubles as the
/// device QEMU would attach to it, so the `id` and `device` arguments of the media commands
/// both name drives, and `locked` is a simulated guest lock set when the drive is created.
///
/// I/O reaches a drive through its *front* node: an anonymous node that forwards every request
/// to the current medium and fails with ENOMEDIUM while there is none (an NBD export serving a
/// drive attaches there). The front node's accounting is the drive's accounting (the device
/// view of query-blockstats); the permissions its parents take are passed to the medium.
///
/// Everything lives on the main loop; every call must be made there.
#include "bjd/block/node.hpp"
#include "bjd/qapi/error.hpp"

#include <map>
#include <optional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::block {

class graph;
class drive_front;

/// How a drive is created (`--drive`, x-drive-add).
struct drive_options {
    std::string id;
    std::string node_name;     ///< initial medium, empty for an empty drive
    bool removable = false;    ///< media may be removed and inserted
    bool tray = false;         ///< has a tray (requires removable); open-tray/close-tray move it
    bool tray_open = false;    ///< initial tray state (requires tray)
    bool locked = false;       ///< simulated guest lock of the tray (requires tray)
    std::vector<std::uint32_t> stats_intervals;   ///< timed-statistics intervals (seconds)
    bool stats_account_invalid = true;
    bool stats_account_failed = true;
};

/// What a tray operation did: whether the tray moved (emit DEVICE_TRAY_MOVED with `open`).
struct tray_change {
    bool moved = false;
    bool open = false;
};

class backend {
public:
    explicit backend(const drive_options& opts);
    ~backend();
    backend(const backend&) = delete;
    backend& operator=(const backend&) = delete;

    const std::string& name() const noexcept { return name_; }
    bool removable() const noexcept { return removable_; }
    bool has_tray() const noexcept { return tray_; }
    bool tray_open() const noexcept { return tray_open_; }
    bool locked() const noexcept { return locked_; }

    /// The root node, or null for an empty drive.
    node* medium() const noexcept { return medium_.get(); }
    const std::shared_ptr<node>& medium_shared() const noexcept { return medium_.shared(); }
    /// The root after skipping implicit filters (mirror_top): what query-block shows.
    node* visible_medium() const noexcept;
    /// Whether the last medium was read-only (blockdev-change-medium's read-only-mode=retain).
    bool read_only_state() const noexcept { return read_only_state_; }

    /// The node exports attach to (see file comment); its acct() is the drive's accounting.
    std::shared_ptr<node> front() const;
    stats::block_acct& acct() noexcept;

    // ---- media operations, with the checks and texts of QEMU 7.2's blockdev.c --------------------
    /// blockdev-open-tray: "Device 'X' is not removable"; no tray, already open → nothing;
    /// locked without force → nothing (QEMU asks the guest, there is none); force unlocks.
    qapi::result<tray_change> open_tray(bool force);
    /// The open step of eject and blockdev-change-medium (QEMU's do_open_tray): like
    /// open_tray, but a locked tray without force fails ("Device 'X' is locked and force was
    /// not specified, wait for tray to open and try again"). `no_tray` is set for tray-less
    /// drives (QEMU's -ENOSYS, which the callers ignore).
    qapi::result<tray_change> open_tray_checked(bool force, bool& no_tray);
    /// blockdev-close-tray: "Device 'X' is not removable"; no tray or closed → nothing.
    qapi::result<tray_change> close_tray();
    /// blockdev-remove-medium: "Device 'X' is not removable", "Tray of device 'X' is not
    /// open", "Node 'X' is busy: …"; an empty drive is a no-op.
    qapi::result<void> remove_medium();
    /// blockdev-insert-medium with the node already looked up: "Device is not removable",
    /// "Tray of the device is not open", "There already is a medium in the device", and the
    /// permission errors of the drive's users (e.g. "Block node is read-only").
    qapi::result<void> insert_medium(std::shared_ptr<node> n);

    /// Attaches `n` without the removable-media checks (drive creation).
    qapi::result<void> attach(std::shared_ptr<node> n);

    /// Whether something (an export) uses the drive's front node.
    bool in_use() const;

private:
    friend class drive_front;
    std::string name_;
    bool removable_;
    bool tray_;
    bool tray_open_;
    bool locked_;
    bool read_only_state_ = false;
    std::uint64_t last_size_ = 0;
    edge medium_;
    std::shared_ptr<drive_front> front_;
};

/// Every named drive, by name. Owned by the graph (graph::drives()).
class backend_table {
public:
    explicit backend_table(graph& g) : graph_(g) {}

    /// Creates a drive. Errors: "Parameter 'id' expects an identifier", "Duplicate ID 'X' for
    /// drive", "Device name 'X' conflicts with an existing node name", "tray requires
    /// removable=on", "Device needs media, but drive is empty" (non-removable without a node),
    /// "Node 'N' not found" and "Node 'N' is already in use" (insert-medium's texts).
    qapi::result<std::shared_ptr<backend>> add(const drive_options& opts);
    /// Deletes a drive (its medium keeps existing if something else holds it). Errors:
    /// DeviceNotFound "Device 'X' not found", "Drive 'X' is in use by an export".
    qapi::result<void> del(std::string_view id);

    std::shared_ptr<backend> find(std::string_view name) const;
    /// QEMU's qmp_get_blk: "Need exactly one of 'device' and 'id'", DeviceNotFound
    /// "Device 'X' not found".
    qapi::result<std::shared_ptr<backend>> get(const std::optional<std::string>& device,
                                               const std::optional<std::string>& id) const;
    /// Every drive, sorted by name.
    std::vector<std::shared_ptr<backend>> all() const;

private:
    graph& graph_;
    std::map<std::string, std::shared_ptr<backend>, std::less<>> drives_;
};

/// The node `n` may become a medium: it has no parent at all. "Node 'X' is already in use".
qapi::result<void> check_free_node(const node& n);

} // namespace bjd::block
