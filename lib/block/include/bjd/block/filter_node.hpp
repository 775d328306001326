// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The common part of filter drivers (QEMU's is_filter drivers: copy-on-read, and the job
/// filters commit_top and mirror_top): the node stands for the one below it, whose size,
/// geometry and allocation it shows, and holds no data of its own, so closing it flushes
/// nothing. Requests go to the current child: another filter put in between (a second
/// backup of the same node) sees them too. The filtered node is also kept here, so that
/// requests outliving the child edge (the filter leaving the graph while they run) still
/// reach it. Main loop only.
#include "bjd/block/node.hpp"

#include <memory>
#include <string>

namespace bjd::block {

class filter_node : public node {
public:
    bool is_filter() const noexcept final { return true; }
    bool implicit() const noexcept override { return implicit_; }
    std::uint64_t size() const noexcept override { return below()->size(); }
    std::int64_t allocated_size() const override { return below()->allocated_size(); }
    std::uint32_t cluster_size() const noexcept override { return below()->cluster_size(); }
    std::uint32_t request_alignment() const noexcept override { return below()->request_alignment(); }
    bool zero_init() const noexcept override { return below()->zero_init(); }
    node* primary_child() const noexcept override { return child(role_); }
    bool flush_on_close() const noexcept override { return false; }

protected:
    /// A filter above `below`, reached as its `role` child ("file" or "backing", as QEMU names
    /// it for the driver); `implicit` when nobody named it (query views skip it).
    filter_node(node_options o, std::shared_ptr<node> below, std::string role, bool implicit)
        : node(std::move(o)), below_(below), role_(std::move(role)), implicit_(implicit)
    {
        add_child(role_, std::move(below));
    }

    /// The filtered node: the child now, or the last one once the edge is gone.
    node* below() const noexcept
    {
        if (node* c = child(role_); c && c != below_.get())
            below_ = c->shared_from_this();
        return below_.get();
    }

private:
    mutable std::shared_ptr<node> below_;   ///< the filtered node, as last seen
    std::string role_;
    bool implicit_;
};

} // namespace bjd::block
