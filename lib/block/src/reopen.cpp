// SPDX-License-Identifier: MIT
#include "bjd/block/reopen.hpp"

#include "bjd/block/driver.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/log.hpp"
#include "drivers/qcow2/node.hpp"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

namespace bjd::block {

/// What reopening may change in an open node's options (node.hpp befriends it).
struct reopen_access {
    static node_options& options(node& n) noexcept { return n.opts_; }
};

namespace {

/// `n` and the nodes below it that take its read-only option, parents first: children
/// opened with it (QEMU's inherits_from), not nodes added on their own by blockdev-add and
/// named by reference, which keep their own options (libvirt's storage nodes).
void inheriting_subtree(node& n, std::vector<node*>& out)
{
    out.push_back(&n);
    for (const auto& c : n.children()) {
        // A COW backing child is read-only whatever its parent is.
        if (!*c || (c->role() == "backing" && !n.is_filter()) || c->get()->monitor_owned())
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
        co_return qapi::generic("Read-only block node '" + n.name() +
                                "' cannot support read-write users");   // checked again below, after the flush
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
        reopen_access::options(*x).read_only = read_only;
    if (auto r = n.refresh_permissions(); !r) {
        for (node* x : nodes)
            reopen_access::options(*x).read_only = !read_only;
        co_return r.error();
    }
    if (!read_only)
        for (node* x : nodes)
            if (auto* q = dynamic_cast<qcow2::qcow2_node*>(x))
                if (auto r = co_await q->reopen_bitmaps(false); !r) {
                    // Writes must not reach an image whose bitmaps say they are consistent.
                    for (node* y : nodes)
                        reopen_access::options(*y).read_only = true;
                    (void)n.refresh_permissions();
                    co_return qapi::generic("Could not mark the bitmaps of '" + x->name() +
                                            "' in use: " + strerror_text(r.error()));
                }
    log::get("block")->info("node '{}' reopened {}", n.name(), read_only ? "read-only" : "read-write");
    co_return qapi::result<void>{};
}

namespace {

/// One checked entry of blockdev-reopen.
struct reopen_entry {
    std::shared_ptr<node> n;
    bool read_only = false;
    node_options::detect_zeroes zeroes = node_options::detect_zeroes::off;
    bool discard_unmap = false;
    std::optional<std::shared_ptr<node>> backing;   ///< set: the new backing link (null: none)
};

node_options::detect_zeroes zeroes_of(const std::optional<qapi::blockdev_detect_zeroes_options>& z)
{
    using enum qapi::blockdev_detect_zeroes_options;
    if (!z || *z == off)
        return node_options::detect_zeroes::off;
    return *z == unmap ? node_options::detect_zeroes::unmap : node_options::detect_zeroes::on;
}

qapi::error cannot_change(std::string_view option)
{
    return qapi::generic("Cannot change the option '" + std::string(option) + "'");
}

/// The `file` child stays the node it is: named by reference, and the same node.
qapi::result<void> check_file_ref(const node& n, const qapi::blockdev_ref& ref)
{
    const auto* name = std::get_if<std::string>(&ref);
    if (!name)
        return cannot_change("file.driver");   // QEMU's words for an inline definition
    const node* f = n.child("file");
    if (!f || f->name() != *name)
        return cannot_change("file");
    return {};
}

/// Whether `n` is `target` or lies below it, through any child.
bool reaches(const node& from, const node* target)
{
    if (&from == target)
        return true;
    return std::any_of(from.children().begin(), from.children().end(),
                       [&](const auto& e) { return e->get() && reaches(*e->get(), target); });
}

/// A job holding the node (a stream, a commit) freezes its backing link.
bool held_by_job(const node& n)
{
    return std::any_of(n.parents().begin(), n.parents().end(),
                       [](const edge* e) { return e->kind() == parent_kind::job; });
}

qapi::result<void> check_backing(graph& g, const node& n, const std::optional<qapi::blockdev_ref_or_null>& opt,
                                 reopen_entry& out)
{
    node* cur = n.backing();
    if (!opt) {
        if (cur)
            return qapi::generic("backing is missing for '" + n.name() + "'");
        return {};
    }
    std::shared_ptr<node> want;
    if (const auto* name = std::get_if<std::string>(&*opt)) {
        auto b = g.lookup(std::nullopt, *name);
        if (!b)
            return b.error();
        want = *b;
        if (reaches(*want, &n))
            return qapi::generic("Making '" + want->name() + "' a backing child of '" + n.name() +
                                 "' would create a cycle");
    } else if (!std::holds_alternative<std::nullptr_t>(*opt)) {
        return cannot_change("backing.driver");
    }
    if (want.get() == cur)
        return {};
    if (cur && (held_by_job(n) || held_by_job(*cur)))
        return qapi::generic("Cannot change frozen 'backing' link from '" + n.name() + "' to '" + cur->name() + "'");
    out.backing = want;
    return {};
}

qapi::result<reopen_entry> check_entry(graph& g, const qapi::blockdev_options& o)
{
    if (!o.node_name)
        return qapi::generic("node-name not specified");
    auto n = g.find(*o.node_name);
    if (!n)
        return qapi::generic("Failed to find node with node-name='" + *o.node_name + "'");
    if (qapi::to_string(o.driver) != n->driver())
        return cannot_change("driver");
    reopen_entry e;
    e.n = n;
    e.read_only = o.read_only.value_or(false);
    e.zeroes = zeroes_of(o.detect_zeroes);
    e.discard_unmap = o.discard == qapi::blockdev_discard_options::unmap;
    const node_options& cur = n->options();
    if (o.cache && o.cache->direct.value_or(false) != cur.cache_direct)
        return cannot_change("cache.direct");
    if (o.cache && o.cache->no_flush.value_or(false) != cur.cache_no_flush)
        return cannot_change("cache.no-flush");
    if (o.u.file && o.u.file->filename != n->filename())
        return cannot_change("filename");
    if (o.u.raw) {
        if (auto r = check_file_ref(*n, o.u.raw->file); !r)
            return r.error();
        if (o.u.raw->offset || o.u.raw->size)
            return cannot_change(o.u.raw->offset ? "offset" : "size");
    }
    if (o.u.qcow2) {
        if (auto r = check_file_ref(*n, o.u.qcow2->file); !r)
            return r.error();
        if (auto r = check_backing(g, *n, o.u.qcow2->backing, e); !r)
            return r.error();
    }
    return e;
}

} // namespace

asio::awaitable<qapi::result<void>> reopen_nodes(graph& g, const std::vector<qapi::blockdev_options>& list)
{
    std::vector<reopen_entry> plan;
    for (const auto& o : list) {
        auto e = check_entry(g, o);
        if (!e)
            co_return e.error();
        plan.push_back(std::move(*e));
    }
    // Backing links first (a node may drop one it could not keep read-write), then the modes.
    struct undo {
        reopen_entry* e = nullptr;
        std::shared_ptr<node> old_backing;
        bool backing_changed = false;
        bool old_read_only = false;
        node_options::detect_zeroes old_zeroes{};
        bool old_discard = false;
    };
    std::vector<undo> done;
    qapi::result<void> r;
    for (auto& e : plan) {
        undo u;
        u.e = &e;
        u.old_read_only = e.n->read_only();
        u.old_zeroes = e.n->options().zeroes;
        u.old_discard = e.n->options().discard_unmap;
        if (e.backing) {
            u.old_backing = e.n->backing() ? e.n->backing()->shared_from_this() : nullptr;
            (void)set_qcow2_backing(*e.n, nullptr);
            r = set_qcow2_backing(*e.n, *e.backing);
            if (!r) {
                (void)set_qcow2_backing(*e.n, u.old_backing);
                break;
            }
            u.backing_changed = true;
        }
        done.push_back(u);
        r = co_await reopen_read_only(*e.n, e.read_only);
        if (!r)
            break;
        reopen_access::options(*e.n).zeroes = e.zeroes;
        reopen_access::options(*e.n).discard_unmap = e.discard_unmap;
    }
    if (!r) {
        for (auto it = done.rbegin(); it != done.rend(); ++it) {
            node& n = *it->e->n;
            reopen_access::options(n).zeroes = it->old_zeroes;
            reopen_access::options(n).discard_unmap = it->old_discard;
            (void)co_await reopen_read_only(n, it->old_read_only);
            if (it->backing_changed) {
                (void)set_qcow2_backing(n, nullptr);
                (void)set_qcow2_backing(n, it->old_backing);
            }
        }
        co_return r;
    }
    for (const auto& e : plan)
        log::get("block")->info("node '{}' reopened (blockdev-reopen)", e.n->name());
    co_return qapi::result<void>{};
}

} // namespace bjd::block
