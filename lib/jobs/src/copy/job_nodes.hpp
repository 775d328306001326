// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// What the block jobs that put a filter above a node and hold nodes of a backing chain
/// (stream, commit, mirror's active commit) do alike: QEMU's block_job_add_bdrv references
/// with their op blockers, the job filter's way in and out of the graph, and handing back a
/// node the job reopened read-write.
#include "bjd/block/graph.hpp"
#include "bjd/block/node.hpp"
#include "bjd/qapi/error.hpp"

#include <boost/asio/any_io_executor.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::jobs::detail {

namespace asio = boost::asio;

/// QEMU's bdrv_is_root_node as the job commands see it: only devices and exports above; a
/// node above it (a filter, an overlay) or a job's reference makes it a non-root node.
bool is_root(const block::node& n);

/// The nodes one job holds. Every reference goes when release() is called or the object dies.
class job_nodes {
public:
    /// `user` names the job in permission errors ("commit job 'c0'"); `type` in the op
    /// blockers ("block device is in use by block job: commit").
    job_nodes(std::string user, std::string_view type);
    ~job_nodes() { release(); }
    job_nodes(const job_nodes&) = delete;
    job_nodes& operator=(const job_nodes&) = delete;

    /// A job reference (QEMU's block_job_add_bdrv): takes `perm`, shares `shared`, and blocks
    /// every other operation on `n` while the job holds it.
    qapi::result<void> hold(const std::shared_ptr<block::node>& n, const char* role, unsigned perm = 0,
                            unsigned shared = block::perm_all);
    /// The job's own I/O on `n` (QEMU: the job's BlockBackend), which makes blockdev-del answer
    /// "Node X is in use".
    qapi::result<void> use(const std::shared_ptr<block::node>& n, const char* role, unsigned perm,
                           unsigned shared = block::perm_all);
    /// Drops every reference and blocker.
    void release();

private:
    qapi::result<void> add(block::parent_kind kind, const std::shared_ptr<block::node>& n, const char* role,
                           unsigned perm, unsigned shared);

    std::string user_;
    std::string blocker_;
    std::vector<std::unique_ptr<block::edge>> edges_;
    std::vector<std::shared_ptr<block::node>> blocked_;
};

/// The checks of a job filter's filter-node-name, as QEMU names any new node
/// (bdrv_assign_node_name): well formed, not a device's id, not taken.
qapi::result<void> check_filter_name(const block::graph& g, const std::string& name);

/// Puts `filter` above `below`: every parent of `below` now goes through it (QEMU's
/// bdrv_append). On failure the graph is as it was.
qapi::result<void> insert_filter(block::graph& g, const std::shared_ptr<block::node>& filter, block::node& below);

/// Takes `filter` out again: its parents back on the node below, its child edges dropped.
void take_out_filter(block::node& filter, std::string_view what);

/// take_out_filter, then closes `filter` once idle.
/// `what` names the job in the log ("commit 'c0'").
void remove_filter(block::graph& g, const asio::any_io_executor& ex, const std::shared_ptr<block::node>& filter,
                   std::string_view what);

/// Reopens `n` read-only again in the background, as it was before the job reopened it for
/// writing (QEMU's stream_clean, commit_clean, mirror_exit_common). A failure is logged: the
/// node stays read-write, which is safe.
void restore_read_only(const asio::any_io_executor& ex, std::shared_ptr<block::node> n, std::string what);

/// The options of a job target's new file node (drive-mirror, drive-backup): the source's open
/// options, read-write, detect-zeroes off, under a fresh name (QEMU's blockdev.c opens such
/// targets with the source's flags plus read-write).
block::node_options target_file_options(block::graph& g, const block::node& source);

/// Opens `path` as a file node with `o` (from `target_file_options`, possibly adjusted).
qapi::result<std::shared_ptr<block::node>> open_target_file(block::graph& g, const block::node_options& o,
                                                            const std::string& path);

} // namespace bjd::jobs::detail
