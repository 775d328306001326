// SPDX-License-Identifier: MIT
#include "bjd/block/snapshot.hpp"
#include "bjd/block/create.hpp"
#include "bjd/block/driver.hpp"
#include "bjd/block/reopen.hpp"
#include "bjd/block/transaction.hpp"
#include "bjd/log.hpp"

#include <boost/asio/this_coro.hpp>

namespace bjd::block {

namespace {

/// The checks QEMU's external_snapshot_prepare makes on the overlay, in its order.
qapi::result<void> check_overlay(const node& overlay)
{
    // A parent that reads the overlay assumes it already shows a whole image; a write-only
    // user (a mirror's target) may see the backing image appear.
    if (overlay.held_perm() & perm_consistent_read)
        return qapi::generic("The overlay is already in use");
    if (overlay.is_filter())
        return qapi::generic("Filters cannot be used as overlays");
    if (overlay.cow_backing())
        return qapi::generic("The overlay already has a backing image");
    if (!qcow2_info(overlay))
        return qapi::generic("The overlay does not support backing images");
    return {};
}

/// Formats blockjobd can open, as QEMU's bdrv_find_format knows them; only qcow2 takes a
/// backing image.
bool known_format(std::string_view f)
{
    for (std::string_view k : {"qcow2", "raw", "file", "host_device", "null-co", "null-aio", "blkdebug"})
        if (f == k)
            return true;
    return false;
}

/// blockdev-snapshot and blockdev-snapshot-sync (QEMU's external_snapshot_action, _commit,
/// _abort).
class external_snapshot final : public transaction_action {
public:
    external_snapshot(graph& g, std::string node, std::string overlay)
        : g_(g), node_(std::move(node)), overlay_ref_(std::move(overlay)) {}
    external_snapshot(graph& g, snapshot_sync_params p) : g_(g), sync_(std::move(p)) {}

    asio::awaitable<qapi::result<void>> prepare() override
    {
        ex_ = co_await asio::this_coro::executor;
        auto found = sync_ ? g_.lookup(sync_->device, sync_->node_name) : g_.lookup(node_);
        if (!found)
            co_return found.error();
        base_ = *found;
        std::string shown = sync_ ? (sync_->device && g_.drives().find(*sync_->device) ? *sync_->device : base_->name())
                                  : node_;
        if (auto r = base_->check_op(block_op::other, shown); !r)
            co_return r.error();
        if (!base_->read_only())
            if (auto r = co_await base_->flush(); !r)
                co_return qapi::generic("An IO error has occurred");
        if (sync_) {
            auto made = co_await open_new_overlay();
            if (!made)
                co_return made.error();
            overlay_ = *made;
        } else {
            auto o = g_.lookup(overlay_ref_);
            if (!o)
                co_return o.error();
            overlay_ = *o;
        }
        auto r = append();
        if (!r && sync_)
            co_await g_.close(overlay_);
        co_return r;
    }

    asio::awaitable<void> commit() override
    {
        log::get("block")->info("snapshot: node '{}' is now the backing image of '{}'", base_->name(),
                                overlay_->name());
        if (sync_)
            g_.close_when_unused(ex_, overlay_);
        // Nobody writes the old node any more; QEMU ignores a failure here too.
        if (auto r = co_await reopen_read_only(*base_, true); !r)
            log::get("block")->warn("snapshot: node '{}' stays read-write: {}", base_->name(), r.error().desc);
    }

    void abort() override
    {
        // The overlay's users go back to the old node, and the overlay lets go of it.
        if (auto r = replace_node(*overlay_, base_); !r)
            log::get("block")->error("snapshot: cannot put '{}' back in place of '{}': {}", base_->name(),
                                     overlay_->name(), r.error().desc);
        (void)set_qcow2_backing(*overlay_, nullptr);
        if (sync_ && !overlay_->monitor_owned())
            g_.close_later(ex_, overlay_);
    }

private:
    /// QEMU's bdrv_append after the overlay's checks: the overlay reads the old node as its
    /// backing image, then takes its place for everyone else.
    qapi::result<void> append()
    {
        if (auto r = check_overlay(*overlay_); !r)
            return r;
        if (auto r = set_qcow2_backing(*overlay_, base_); !r)
            return r;
        if (auto r = replace_node(*base_, overlay_); !r) {
            (void)set_qcow2_backing(*overlay_, nullptr);
            return r;
        }
        return {};
    }

    /// blockdev-snapshot-sync's overlay: created (unless mode=existing) and opened.
    asio::awaitable<qapi::result<std::shared_ptr<node>>> open_new_overlay()
    {
        const snapshot_sync_params& p = *sync_;
        if (p.node_name && !p.overlay_name)
            co_return qapi::generic("New overlay node-name missing");
        if (p.overlay_name && (g_.find(*p.overlay_name) || g_.drives().find(*p.overlay_name)))
            co_return qapi::generic("New overlay node-name already in use");
        if (p.overlay_name)
            if (auto r = check_node_name(*p.overlay_name); !r)
                co_return r.error();
        if (!p.existing) {
            if (!known_format(p.format))
                co_return qapi::generic("Unknown file format '" + p.format + "'");
            if (p.format != "qcow2")
                co_return qapi::generic("Backing file not supported for file format '" + p.format + "'");
            auto c = co_await create_qcow2(g_, p.file, base_->size(), base_->filename(),
                                           std::string(base_->driver()), 0, "blockdev-snapshot-sync");
            if (!c)
                co_return c.error();
        }
        // The node's open flags, as QEMU passes them on: not its other options (detect-zeroes,
        // force-share).
        node_options fo;
        fo.name = g_.auto_name();
        fo.read_only = base_->options().read_only;
        fo.auto_read_only = base_->options().auto_read_only;
        fo.cache_direct = base_->options().cache_direct;
        fo.cache_no_flush = base_->options().cache_no_flush;
        fo.discard_unmap = base_->options().discard_unmap;
        auto file = open_file(fo, {.filename = p.file}, g_.engine());
        if (!file)
            co_return file.error();
        if (p.format != "qcow2")
            co_return qapi::generic("The overlay does not support backing images");
        node_options qo = fo;
        qo.name = p.overlay_name ? *p.overlay_name : g_.auto_name();
        auto overlay = co_await open_qcow2(qo, *file, {});
        if (!overlay)
            co_return overlay.error();
        g_.insert(*file);
        g_.insert(*overlay);
        co_return *overlay;
    }

    graph& g_;
    std::string node_, overlay_ref_;
    std::optional<snapshot_sync_params> sync_;
    std::shared_ptr<node> base_, overlay_;
    asio::any_io_executor ex_;
};

} // namespace

std::unique_ptr<transaction_action> snapshot_action(graph& g, std::string node, std::string overlay)
{
    return std::make_unique<external_snapshot>(g, std::move(node), std::move(overlay));
}

std::unique_ptr<transaction_action> snapshot_sync_action(graph& g, snapshot_sync_params p)
{
    return std::make_unique<external_snapshot>(g, std::move(p));
}

asio::awaitable<qapi::result<void>> snapshot(graph& g, const std::string& node, const std::string& overlay)
{
    std::vector<std::unique_ptr<transaction_action>> one;
    one.push_back(snapshot_action(g, node, overlay));
    co_return co_await run_transaction(g.gate(), std::move(one));
}

asio::awaitable<qapi::result<void>> snapshot_sync(graph& g, const snapshot_sync_params& p)
{
    std::vector<std::unique_ptr<transaction_action>> one;
    one.push_back(snapshot_sync_action(g, p));
    co_return co_await run_transaction(g.gate(), std::move(one));
}

} // namespace bjd::block
