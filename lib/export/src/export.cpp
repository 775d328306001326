// SPDX-License-Identifier: MIT
// block_export: the edge to the node and the set of attached clients.
#include "bjd/export/export.hpp"

#include <algorithm>
#include <cassert>

namespace bjd::exports {

block_export::block_export(export_options opts, std::shared_ptr<block::node> n, block::io_gate* gate)
    : opts_(std::move(opts))
    , edge_(block::parent_kind::export_, "export '" + opts_.id + "'", "root")
{
    gate_ = gate;
    (void)edge_.attach(std::move(n));   // takes nothing yet: claim_permissions asks
}

block_export::~block_export()
{
    for (auto& b : bitmaps_)
        b->set_busy(false);
}

boost::asio::awaitable<block::io_gate::pass> block_export::enter_gate()
{
    if (!gate_)
        co_return block::io_gate::pass();
    co_return co_await gate_->enter();
}

qapi::result<void> block_export::claim_permissions()
{
    // QEMU's NBD exports: read (and write when writable), sharing everything but resize, since
    // clients are told the size once.
    unsigned perm = block::perm_consistent_read | (opts_.writable ? block::perm_write : 0u);
    return edge_.set_perms(perm, block::perm_all & ~block::perm_resize);
}

qapi::result<void> block_export::claim_bitmaps()
{
    std::vector<std::shared_ptr<block::named_bitmap>> found;
    for (const auto& want : opts_.bitmaps) {
        if (!want.node_ref) {
            auto b = block::find_export_bitmap(*edge_.get(), want.name, opts_.writable);
            if (!b)
                return b.error();
            found.push_back(std::move(*b));
            continue;
        }
        // A {node, name} pair: QEMU 7.2's block_dirty_bitmap_lookup, and only the busy and
        // inconsistent checks (QEMU makes the read-only export check for names only).
        if (!want.node)
            return qapi::generic("Node '" + *want.node_ref + "' not found");
        auto b = want.node->find_bitmap(want.name);
        if (!b)
            return qapi::generic("Dirty bitmap '" + want.name + "' not found");
        if (auto r = block::check_bitmap(*b, block::bitmap_usable); !r)
            return r;
        found.push_back(std::move(b));
    }
    for (auto& b : found)
        b->set_busy(true);
    bitmaps_ = std::move(found);
    return {};
}

std::string block_export::node_name() const
{
    return edge_ ? edge_->name() : std::string();
}

void block_export::attach(client* c)
{
    clients_.push_back(c);
}

std::size_t block_export::active_clients() const
{
    return std::size_t(std::count_if(clients_.begin(), clients_.end(), [](client* c) { return !c->hung_up(); }));
}

void block_export::detach(client* c)
{
    auto it = std::find(clients_.begin(), clients_.end(), c);
    if (it == clients_.end())
        return;
    clients_.erase(it);
    if (shutting_down_ && clients_.empty() && on_idle_) {
        auto f = std::move(on_idle_);
        on_idle_ = nullptr;
        f();
    }
}

void block_export::begin_shutdown(bool hard, std::function<void()> on_idle)
{
    assert(!shutting_down_);
    shutting_down_ = true;
    on_idle_ = std::move(on_idle);
    if (hard) {
        // close() never detaches synchronously: the connection detaches once its in-flight
        // requests are done, so iterating over a copy is enough.
        auto copy = clients_;
        for (client* c : copy)
            c->close();
    }
    if (clients_.empty() && on_idle_) {
        auto f = std::move(on_idle_);
        on_idle_ = nullptr;
        f();
    }
}

void block_export::release()
{
    for (auto& b : bitmaps_)
        b->set_busy(false);
    bitmaps_.clear();
    edge_.detach();
}

} // namespace bjd::exports
