// SPDX-License-Identifier: MIT
// transaction, blockdev-snapshot and blockdev-snapshot-sync: each action becomes one of the
// block layer's transaction actions, run together (block/transaction.hpp); the snapshot
// commands are transactions of one action.
#include "bjd/block/bitmaps.hpp"
#include "bjd/block/snapshot.hpp"
#include "bjd/block/transaction.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"
#include "backup_cmds.hpp"
#include "bitmap_cmds.hpp"

namespace bjd::qapi {

namespace {

/// QEMU's abort action: fails in prepare, so every action before it is undone.
class abort_action final : public block::transaction_action {
public:
    boost::asio::awaitable<result<void>> prepare() override
    {
        co_return generic("Transaction aborted using Abort action");
    }
};

/// Stands for an action that has no jobs in a grouped transaction: it fails in its turn, so
/// the actions before it are undone (QEMU's action_check_completion_mode).
class refuse_grouped final : public block::transaction_action {
public:
    explicit refuse_grouped(transaction_action_kind k) : kind_(k) {}
    boost::asio::awaitable<result<void>> prepare() override
    {
        co_return generic("Action '" + std::string(to_string(kind_)) +
                          "' does not support Transaction property completion-mode = grouped");
    }

private:
    transaction_action_kind kind_;
};

block::snapshot_sync_params sync_params(blockdev_snapshot_sync& s)
{
    return {.device = std::move(s.device),
            .node_name = std::move(s.node_name),
            .file = std::move(s.snapshot_file),
            .overlay_name = std::move(s.snapshot_node_name),
            .format = s.format.value_or("qcow2"),
            .existing = s.mode == new_image_mode::existing};
}

} // namespace

boost::asio::awaitable<result<void>> qmp_transaction(qmp::context& ctx, transaction_args args)
{
    const auto mode = args.properties ? args.properties->completion_mode.value_or(action_completion_mode::individual)
                                      : action_completion_mode::individual;
    // Grouped: the backup jobs of this transaction finish together.
    std::shared_ptr<jobs::job_txn> txn;
    if (mode == action_completion_mode::grouped)
        txn = std::make_shared<jobs::job_txn>();
    std::vector<std::unique_ptr<block::transaction_action>> actions;
    for (auto& a : args.actions) {
        const bool backup = a.type == transaction_action_kind::blockdev_backup ||
                            a.type == transaction_action_kind::drive_backup;
        if (txn && !backup && a.type != transaction_action_kind::abort) {
            actions.push_back(std::make_unique<refuse_grouped>(a.type));
            continue;
        }
        switch (a.type) {
        case transaction_action_kind::abort:
            actions.push_back(std::make_unique<abort_action>());
            break;
        case transaction_action_kind::block_dirty_bitmap_add: {
            auto& d = a.u.block_dirty_bitmap_add->data;
            actions.push_back(block::bitmap_add_action(*ctx.graph, d.node, d.name, d.granularity,
                                                       d.persistent.value_or(false), d.disabled.value_or(false)));
            break;
        }
        case transaction_action_kind::block_dirty_bitmap_remove:
            actions.push_back(block::bitmap_remove_action(*ctx.graph, a.u.block_dirty_bitmap_remove->data.node,
                                                          a.u.block_dirty_bitmap_remove->data.name));
            break;
        case transaction_action_kind::block_dirty_bitmap_clear:
            actions.push_back(block::bitmap_clear_action(*ctx.graph, a.u.block_dirty_bitmap_clear->data.node,
                                                         a.u.block_dirty_bitmap_clear->data.name));
            break;
        case transaction_action_kind::block_dirty_bitmap_enable:
        case transaction_action_kind::block_dirty_bitmap_disable: {
            const bool enable = a.type == transaction_action_kind::block_dirty_bitmap_enable;
            auto& d = enable ? a.u.block_dirty_bitmap_enable->data : a.u.block_dirty_bitmap_disable->data;
            actions.push_back(block::bitmap_enable_action(*ctx.graph, d.node, d.name, enable));
            break;
        }
        case transaction_action_kind::block_dirty_bitmap_merge: {
            auto& d = a.u.block_dirty_bitmap_merge->data;
            actions.push_back(block::bitmap_merge_action(*ctx.graph, d.node, d.target, merge_sources(d.bitmaps)));
            break;
        }
        case transaction_action_kind::blockdev_backup:
            actions.push_back(jobs::backup_action(*ctx.jobs, *ctx.graph,
                                                  backup_params_of(a.u.blockdev_backup->data), txn));
            break;
        case transaction_action_kind::drive_backup:
            actions.push_back(jobs::drive_backup_action(*ctx.jobs, *ctx.graph,
                                                        drive_backup_params_of(a.u.drive_backup->data), txn));
            break;
        case transaction_action_kind::blockdev_snapshot:
            actions.push_back(block::snapshot_action(*ctx.graph, a.u.blockdev_snapshot->data.node,
                                                     a.u.blockdev_snapshot->data.overlay));
            break;
        case transaction_action_kind::blockdev_snapshot_sync:
            actions.push_back(block::snapshot_sync_action(*ctx.graph, sync_params(a.u.blockdev_snapshot_sync->data)));
            break;
        }
    }
    co_return co_await block::run_transaction(ctx.graph->gate(), std::move(actions));
}

boost::asio::awaitable<result<void>> qmp_blockdev_snapshot(qmp::context& ctx, blockdev_snapshot_args args)
{
    co_return co_await block::snapshot(*ctx.graph, args.node, args.overlay);
}

boost::asio::awaitable<result<void>> qmp_blockdev_snapshot_sync(qmp::context& ctx, blockdev_snapshot_sync_args args)
{
    // A named object: GCC 12 destroys temporaries of a co_await's full expression too early.
    const block::snapshot_sync_params p = sync_params(args);
    co_return co_await block::snapshot_sync(*ctx.graph, p);
}

} // namespace bjd::qapi
