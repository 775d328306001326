// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The block graph: every node by name, blockdev-add/blockdev-del, and lookups by the names
/// QMP commands take. Lives on the main loop; every call must be made there.
#include "bjd/block/backend.hpp"
#include "bjd/block/node.hpp"
#include "bjd/io/engine.hpp"
#include "bjd/qapi/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::qapi { struct blockdev_options; }

namespace bjd::block {

class graph {
public:
    /// `engine` serves aio=io_uring and aio=native (which blockjobd maps to io_uring; it may be
    /// the thread-pool fallback when io_uring is unusable); `threads` serves aio=threads.
    graph(io::engine& engine, io::engine& threads);
    ~graph();

    io::engine& engine() noexcept { return engine_; }
    io::engine& thread_engine() noexcept { return threads_; }

    /// blockdev-add: opens the node (and inline children), registers it as monitor-owned.
    /// Errors carry QEMU 7.2's texts ("Duplicate nodes with node-name='X'", "Could not open
    /// 'F': No such file or directory", …).
    asio::awaitable<qapi::result<std::shared_ptr<node>>> add(const qapi::blockdev_options& opts);

    /// Opens a node like `add` but without making it monitor-owned (inline children,
    /// drive-mirror targets). `top_level` requires a node-name.
    asio::awaitable<qapi::result<std::shared_ptr<node>>> open(const qapi::blockdev_options& opts, bool top_level);

    /// Opens the backing chain a qcow2 node's header names, as blockdev-add does without
    /// `backing` (relative to the image, read-only, "#blockN" names, loops refused), and
    /// attaches it as the node's backing child (drive-mirror mode=existing at completion).
    /// No-op for other drivers, an empty header backing file, or an attached backing. On
    /// error ("Could not open backing file: …") nothing is attached or registered.
    asio::awaitable<qapi::result<void>> open_backing_chain(node& n);

    /// blockdev-del: "Failed to find node with node-name='X'", "Node X is not owned by the
    /// monitor", "Node 'X' is busy: …", "Node X is in use", "Block device X is in use".
    qapi::result<void> del(std::string_view node_name);

    /// The node called `name`, or null.
    std::shared_ptr<node> find(std::string_view name) const;

    /// QEMU's lookup for `device` arguments (drive name first, then node-name): a drive's
    /// medium, "Device 'X' has no medium", "Cannot find device='X' nor node-name='X'".
    qapi::result<std::shared_ptr<node>> lookup(std::string_view device) const;

    /// Registers a node made elsewhere (filters, job targets). Its name must be unique; an empty
    /// name is not allowed — use `auto_name()`.
    void insert(std::shared_ptr<node> n);
    /// Forgets a node that is being destroyed (no parents left).
    void erase(const node& n);

    /// A fresh "#blockNNN" name.
    std::string auto_name();

    /// Every node, in creation order.
    std::vector<std::shared_ptr<node>> nodes() const;

    /// The named drives (backend.hpp).
    backend_table& drives() noexcept { return drives_; }
    const backend_table& drives() const noexcept { return drives_; }

private:
    io::engine& engine_;
    io::engine& threads_;
    std::vector<std::shared_ptr<node>> nodes_;
    unsigned next_auto_ = 0;
    backend_table drives_{*this};   // after nodes_: drives go first, dropping their media edges
};

/// "Invalid node-name: 'X'" unless `name` starts with a letter and has only letters, digits,
/// '-', '.', '_' (QEMU's id_wellformed), and "Node name too long" past 31 characters.
qapi::result<void> check_node_name(std::string_view name);

} // namespace bjd::block
