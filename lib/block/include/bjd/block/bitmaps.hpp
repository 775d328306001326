// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Named dirty bitmaps (QEMU 7.2's block-dirty-bitmap-* commands, block/monitor/
/// bitmap-qmp-cmds.c and block/dirty-bitmap.c, in their order and words).
///
/// A named bitmap belongs to its node: it records every write-type request that reaches the
/// node (NBD exports, jobs, drives, a format writing into its file), as the node's write
/// observer, while enabled; it is resized with the node and goes away with it (blockdev-del).
/// An export that serves it (qemu:dirty-bitmap:NAME) marks it busy: then no command may
/// change or remove it. Persistent bitmaps are stored by drivers that can (qcow2 version 3,
/// drivers/qcow2/bitmaps.cpp): written into the image when the node closes, loaded when it
/// opens; other nodes refuse `persistent: true` (node::can_store_new_bitmap). Main loop only.
#include "bjd/block/dirty_bitmap.hpp"
#include "bjd/block/node.hpp"
#include "bjd/block/transaction.hpp"
#include "bjd/qapi/error.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::block {

class graph;

/// QEMU's BDRV_BITMAP_MAX_NAME_SIZE.
inline constexpr std::size_t max_bitmap_name = 1023;

class named_bitmap final : public write_observer {
public:
    named_bitmap(std::string name, std::uint64_t size, std::uint64_t granularity)
        : name_(std::move(name)), bits_(size, granularity) {}

    const std::string& name() const noexcept { return name_; }
    dirty_bitmap& bits() noexcept { return bits_; }
    const dirty_bitmap& bits() const noexcept { return bits_; }

    /// Whether writes mark it (QMP: recording; block-dirty-bitmap-enable/-disable).
    bool enabled() const noexcept { return enabled_; }
    void set_enabled(bool v) noexcept { enabled_ = v; }
    /// In use by an operation (an export serving it): QMP may not touch it.
    bool busy() const noexcept { return busy_; }
    void set_busy(bool v) noexcept { busy_ = v; }
    /// Stored in the node's image (block-dirty-bitmap-add persistent: true, or loaded from it).
    bool persistent() const noexcept { return persistent_; }
    void set_persistent(bool v) noexcept { persistent_ = v; }
    /// Loaded from an image whose copy was still marked in use (its writer never stored it):
    /// its bits are unknown, so it stays empty, records nothing and may only be removed
    /// (QEMU's bdrv_dirty_bitmap_set_inconsistent).
    bool inconsistent() const noexcept { return inconsistent_; }
    void set_inconsistent() noexcept
    {
        inconsistent_ = true;
        enabled_ = false;
    }
    /// Loaded from an image the node cannot write (read-only): it cannot be changed or removed,
    /// since the image could not follow (QEMU's bdrv_dirty_bitmap_set_readonly).
    bool readonly() const noexcept { return readonly_; }
    void set_readonly(bool v) noexcept { readonly_ = v; }

    void on_write(std::uint64_t offset, std::uint64_t length) override
    {
        if (enabled_)
            bits_.set(offset, length);
    }
    std::optional<dirty_bitmap_info> bitmap_info() const override;

private:
    std::string name_;
    dirty_bitmap bits_;
    bool enabled_ = true;
    bool busy_ = false;
    bool persistent_ = false;
    bool inconsistent_ = false;
    bool readonly_ = false;
};

/// What a command needs of a bitmap, QEMU's BDRV_BITMAP_* flags of bdrv_dirty_bitmap_check.
enum bitmap_need : unsigned {
    bitmap_not_busy = 1u << 0,           ///< "Bitmap 'x' is currently in use by another operation and cannot be used"
    bitmap_writable = 1u << 1,           ///< "Bitmap 'x' is readonly and cannot be modified"
    bitmap_consistent = 1u << 2,         ///< "Bitmap 'x' is inconsistent and cannot be used"
    bitmap_changeable = bitmap_not_busy | bitmap_writable | bitmap_consistent,   ///< BDRV_BITMAP_DEFAULT
    bitmap_usable = bitmap_not_busy | bitmap_consistent,                         ///< BDRV_BITMAP_ALLOW_RO
};
/// Checks `need` in QEMU's order (busy, read-only, inconsistent).
qapi::result<void> check_bitmap(const named_bitmap& b, unsigned need);

/// block-dirty-bitmap-add. Order: empty name, the node (drive, then node name), granularity
/// (a power of two, at least 512), persistence, a duplicate name, a name over 1023 bytes.
qapi::result<void> bitmap_add(graph& g, std::string_view node_ref, const std::string& name,
                              std::optional<std::uint32_t> granularity, bool persistent, bool disabled);
/// block-dirty-bitmap-remove, -clear, -enable, -disable: "Node 'x' not found", "Dirty bitmap
/// 'y' not found", then `check_bitmap`: remove needs the bitmap idle and writable (an
/// inconsistent one may go), clear `bitmap_changeable`, enable and disable `bitmap_usable`.
qapi::result<void> bitmap_remove(graph& g, std::string_view node_ref, const std::string& name);
qapi::result<void> bitmap_clear(graph& g, std::string_view node_ref, const std::string& name);
qapi::result<void> bitmap_enable(graph& g, std::string_view node_ref, const std::string& name, bool enable);

/// A merge source: a bitmap on the target's node (`node` absent) or on any node.
struct bitmap_ref {
    std::optional<std::string> node;
    std::string name;
};
/// block-dirty-bitmap-merge: every source into `target`, all or nothing. Target lookup, then
/// for each source in order: its lookup, the target's `bitmap_changeable`, the source's
/// `bitmap_usable`, the same size as the target's node.
qapi::result<void> bitmap_merge(graph& g, std::string_view node_ref, const std::string& target,
                                const std::vector<bitmap_ref>& sources);

/// The commands above as `transaction` actions (transaction.hpp), with QEMU 7.2's undo:
/// add removes the new bitmap on abort; remove marks it busy in prepare and drops it only on
/// commit; clear and merge keep a copy of the bits to restore; enable and disable restore
/// the previous state.
std::unique_ptr<transaction_action> bitmap_add_action(graph& g, std::string node, std::string name,
                                                      std::optional<std::uint32_t> granularity, bool persistent,
                                                      bool disabled);
std::unique_ptr<transaction_action> bitmap_remove_action(graph& g, std::string node, std::string name);
std::unique_ptr<transaction_action> bitmap_clear_action(graph& g, std::string node, std::string name);
std::unique_ptr<transaction_action> bitmap_enable_action(graph& g, std::string node, std::string name, bool enable);
std::unique_ptr<transaction_action> bitmap_merge_action(graph& g, std::string node, std::string target,
                                                        std::vector<bitmap_ref> sources);

/// The bitmap an export of `n` serves as qemu:dirty-bitmap:NAME: found on `n` or down its
/// filter and backing chain ("Bitmap 'x' is not found"), not enabled on a writable node when
/// the export is read-only ("Enabled bitmap 'x' incompatible with readonly export"), usable.
/// The caller marks it busy once every bitmap of the export passed.
qapi::result<std::shared_ptr<named_bitmap>> find_export_bitmap(node& n, const std::string& name, bool writable_export);

} // namespace bjd::block
