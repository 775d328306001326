// SPDX-License-Identifier: MIT
#include "bjd/block/reopen.hpp"
#include "bjd/log.hpp"
#include "drivers/qcow2/node.hpp"

#include <algorithm>
#include <vector>

namespace bjd::block {

namespace {

/// `n` and the nodes below it that take its read-only option, parents first.
void inheriting_subtree(node& n, std::vector<node*>& out)
{
    out.push_back(&n);
    for (const auto& c : n.children()) {
        // A COW backing child is read-only whatever its parent is.
        if (!*c || (c->role() == "backing" && !n.is_filter()))
            continue;
        if (std::find(out.begin(), out.end(), c->get()) == out.end())
            inheriting_subtree(*c->get(), out);
    }
}

} // namespace

asio::awaitable<qapi::result<void>> reopen_read_only(node& n, bool read_only)
{
    if (n.read_only() == read_only)
        co_return qapi::result<void>{};
    auto keep = n.shared_from_this();
    std::vector<node*> nodes;
    inheriting_subtree(n, nodes);
    std::erase_if(nodes, [&](node* x) { return x->read_only() == read_only; });
    if (read_only && (n.held_perm() & (perm_write | perm_write_unchanged)))
        co_return qapi::generic("Block node is read-only");   // checked again below, after the flush
    if (read_only) {
        for (node* x : nodes)
            if (auto* q = dynamic_cast<qcow2::qcow2_node*>(x))
                if (auto r = co_await q->reopen_bitmaps(true); !r)
                    co_return qapi::generic("Could not store bitmaps of '" + x->name() + "': " +
                                            strerror_text(r.error()));
        for (node* x : nodes)
            if (auto r = co_await x->flush(); !r)
                co_return qapi::generic("Could not flush '" + x->name() + "': " + strerror_text(r.error()));
    }
    for (node* x : nodes)
        x->opts_.read_only = read_only;
    if (auto r = n.refresh_permissions(); !r) {
        for (node* x : nodes)
            x->opts_.read_only = !read_only;
        co_return r.error();
    }
    if (!read_only)
        for (node* x : nodes)
            if (auto* q = dynamic_cast<qcow2::qcow2_node*>(x))
                if (auto r = co_await q->reopen_bitmaps(false); !r) {
                    // Writes must not reach an image whose bitmaps say they are consistent.
                    for (node* y : nodes)
                        y->opts_.read_only = true;
                    (void)n.refresh_permissions();
                    co_return qapi::generic("Could not mark the bitmaps of '" + x->name() +
                                            "' in use: " + strerror_text(r.error()));
                }
    log::get("block")->info("node '{}' reopened {}", n.name(), read_only ? "read-only" : "read-write");
    co_return qapi::result<void>{};
}

} // namespace bjd::block
