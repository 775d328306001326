// SPDX-License-Identifier: MIT
// Permissions on the block graph: one transaction for every change of what users take on a
// node (new permissions on an edge, attaching or detaching an edge, replacing a node), after
// QEMU 7.2's block.c (bdrv_refresh_perms, bdrv_parent_perms_conflict, bdrv_default_perms).
#include "bjd/block/driver.hpp"
#include "bjd/block/node.hpp"
#include "bjd/log.hpp"

#include <algorithm>
#include <cassert>
#include <set>
#include <utility>
#include <vector>

namespace bjd::block {

std::string perm_names(unsigned perm)
{
    static constexpr std::pair<unsigned, const char*> names[] = {
        {perm_consistent_read, "consistent read"},
        {perm_write, "write"},
        {perm_write_unchanged, "write unchanged"},
        {perm_resize, "resize"},
    };
    std::string out;
    for (auto [bit, name] : names) {
        if (perm & bit) {
            if (!out.empty())
                out += ", ";
            out += name;
        }
    }
    return out;
}

// ---- default child permissions -----------------------------------------------------------------

perm_pair filter_child_perms(perm_pair cumulative) noexcept { return cumulative; }

perm_pair cow_child_perms(perm_pair cumulative) noexcept
{
    perm_pair p;
    p.perm = cumulative.perm & perm_consistent_read;
    p.shared = (cumulative.shared & perm_write) ? (perm_write | perm_resize) : 0u;
    p.shared |= perm_consistent_read | perm_write_unchanged;
    return p;
}

perm_pair storage_child_perms(perm_pair cumulative, bool metadata, bool writable) noexcept
{
    perm_pair p = filter_child_perms(cumulative);
    if (metadata) {
        // The format touches its metadata even when nobody writes through it, and must be able
        // to read it; nobody else may change it under the format.
        if (writable)
            p.perm |= perm_write | perm_resize;
        p.perm |= perm_consistent_read;
        p.shared &= ~(perm_write | perm_resize);
    }
    // The data lives in the file: a writer may grow it, nobody else may resize it, and an
    // unchanged write above can still change bytes below (allocation).
    p.shared &= ~perm_resize;
    if (p.perm & perm_write_unchanged)
        p.perm |= perm_write;
    if (p.perm & perm_write)
        p.perm |= perm_resize;
    return p;
}

perm_pair node::child_permissions(const edge& child, perm_pair cumulative) const
{
    if (child.role() == "backing" && !(is_filter() && child.get() == primary_child()))
        return cow_child_perms(cumulative);
    return filter_child_perms(cumulative);
}

std::vector<edge*> node::permission_edges() const
{
    std::vector<edge*> out;
    out.reserve(children_.size());
    for (const auto& c : children_)
        out.push_back(c.get());
    return out;
}

qapi::result<void> node::prepare_permissions(perm_pair) { return {}; }
void node::commit_permissions() {}
void node::abort_permissions() {}

// ---- the transaction ---------------------------------------------------------------------------

/// One permission change. Edits are made in place and remembered; `refresh` walks the nodes
/// below the ones whose parents changed, parents before children, checks and prepares them;
/// then `commit` or `abort` (also by the destructor) ends it. Main loop only.
class perm_update {
public:
    perm_update() = default;
    perm_update(const perm_update&) = delete;
    perm_update& operator=(const perm_update&) = delete;
    ~perm_update()
    {
        if (!finished_)
            abort();
    }

    void set_edge(edge& e, perm_pair p)
    {
        remember(e);
        e.perms_ = p;
    }

    /// Points `e` at `to` (null: nowhere), keeping parent lists in order (newest last).
    void move_edge(edge& e, std::shared_ptr<node> to)
    {
        remember(e);
        if (e.node_) {
            remember_parents(*e.node_);
            auto& ps = e.node_->parents_;
            ps.erase(std::remove(ps.begin(), ps.end(), &e), ps.end());
        }
        e.node_ = std::move(to);
        if (e.node_) {
            remember_parents(*e.node_);
            e.node_->parents_.push_back(&e);
        }
    }

    qapi::result<void> refresh(std::vector<node*> roots)
    {
        std::vector<node*> order;
        std::set<node*> seen;
        for (node* r : roots)
            if (r)
                visit(r, seen, order);
        std::reverse(order.begin(), order.end());   // post-order reversed: parents first
        for (node* n : order)
            if (auto r = refresh_node(*n); !r)
                return r;
        return {};
    }

    void commit()
    {
        assert(!finished_);
        finished_ = true;
        for (auto& [n, cum] : prepared_) {
            n->commit_permissions();
            n->held_ = cum;
        }
    }

    void abort()
    {
        assert(!finished_);
        finished_ = true;
        for (auto it = prepared_.rbegin(); it != prepared_.rend(); ++it)
            it->first->abort_permissions();
        for (auto it = edges_.rbegin(); it != edges_.rend(); ++it) {
            it->e->perms_ = it->perms;
            it->e->node_ = it->target;
        }
        for (auto& [n, ps] : parents_)
            n->parents_ = ps;
    }

private:
    struct saved_edge {
        edge* e;
        perm_pair perms;
        std::shared_ptr<node> target;
    };

    void remember(edge& e)
    {
        if (std::none_of(edges_.begin(), edges_.end(), [&](const saved_edge& s) { return s.e == &e; }))
            edges_.push_back({&e, e.perms_, e.node_});
    }

    void remember_parents(node& n)
    {
        if (std::none_of(parents_.begin(), parents_.end(), [&](const auto& p) { return p.first.get() == &n; }))
            parents_.emplace_back(n.shared_from_this(), n.parents_);
    }

    static void visit(node* n, std::set<node*>& seen, std::vector<node*>& order)
    {
        if (!seen.insert(n).second)
            return;
        for (edge* e : n->permission_edges())
            if (e->get())
                visit(e->get(), seen, order);
        order.push_back(n);
    }

    /// QEMU's bdrv_a_allow_b over every pair of parents, newest first as QEMU lists them.
    static qapi::result<void> check_conflicts(const node& n)
    {
        const auto& ps = n.parents_;
        for (auto a = ps.rbegin(); a != ps.rend(); ++a) {
            for (auto b = ps.rbegin(); b != ps.rend(); ++b) {
                if (a == b)
                    continue;
                unsigned denied = (*b)->perms_.perm & ~(*a)->perms_.shared;
                if (denied == 0)
                    continue;
                return qapi::generic("Permission conflict on node '" + n.name() + "': permissions '" +
                                     perm_names(denied) + "' are both required by " + (*b)->user_desc() +
                                     " (uses node '" + n.name() + "' as '" + std::string((*b)->child_name()) +
                                     "' child) and unshared by " + (*a)->user_desc() + " (uses node '" + n.name() +
                                     "' as '" + std::string((*a)->child_name()) + "' child).");
            }
        }
        return {};
    }

    qapi::result<void> refresh_node(node& n)
    {
        if (auto r = check_conflicts(n); !r)
            return r;
        perm_pair cum{0, perm_all};
        for (const edge* e : n.parents_) {
            cum.perm |= e->perms_.perm;
            cum.shared &= e->perms_.shared;
        }
        if ((cum.perm & (perm_write | perm_write_unchanged)) && n.read_only())
            return qapi::generic("Block node is read-only");
        if (cum != n.held_) {
            if (auto r = n.prepare_permissions(cum); !r)
                return r;
            prepared_.emplace_back(&n, cum);
        }
        for (edge* e : n.permission_edges()) {
            if (!e->get())
                continue;
            perm_pair p = n.child_permissions(*e, cum);
            if (e->get()->force_share())
                p.shared = perm_all;
            set_edge(*e, p);
        }
        return {};
    }

    bool finished_ = false;
    std::vector<saved_edge> edges_;
    std::vector<std::pair<std::shared_ptr<node>, std::vector<edge*>>> parents_;
    std::vector<std::pair<node*, perm_pair>> prepared_;
};

/// Runs `t.refresh(roots)` and commits, or aborts and returns the error.
static qapi::result<void> finish(perm_update& t, std::vector<node*> roots)
{
    if (auto r = t.refresh(std::move(roots)); !r) {
        t.abort();
        return r;
    }
    t.commit();
    return {};
}

// ---- edges -------------------------------------------------------------------------------------

edge::edge(parent_kind kind, std::string owner, std::string role)
    : kind_(kind), owner_(std::move(owner)), role_(std::move(role))
{
}

edge::~edge() { detach(); }

std::string edge::user_desc() const
{
    switch (kind_) {
    case parent_kind::node:
    case parent_kind::backend:
    case parent_kind::job:
        return owner_;
    case parent_kind::export_:
    case parent_kind::anonymous:
        break;
    }
    return "an unnamed block device";
}

std::string_view edge::child_name() const noexcept
{
    if (kind_ == parent_kind::node || kind_ == parent_kind::job)
        return role_;
    return "root";
}

qapi::result<void> edge::attach(std::shared_ptr<node> n)
{
    if (n == node_)
        return {};
    if (!n) {
        detach();
        return {};
    }
    std::shared_ptr<node> old = node_;   // alive until the change is decided
    perm_update t;
    t.move_edge(*this, n);
    auto r = finish(t, {old.get(), n.get()});
    if (r && old)
        old->check_unused();
    return r;
}

void edge::detach()
{
    if (!node_)
        return;
    std::shared_ptr<node> old = node_;
    {
        perm_update t;
        t.move_edge(*this, nullptr);
        if (finish(t, {old.get()})) {
            old->check_unused();
            return;
        }
    }
    // Giving up permissions cannot conflict; a driver that cannot follow (a file that cannot
    // be reopened read-only) keeps holding more than it needs, which is safe.
    auto& ps = old->parents_;
    ps.erase(std::remove(ps.begin(), ps.end(), this), ps.end());
    node_.reset();
    log::get("block")->warn("{} left node '{}', which keeps its previous permissions", owner_, old->name());
    old->check_unused();
}

qapi::result<void> edge::set_perms(unsigned perm, unsigned shared)
{
    if (!node_) {
        perms_ = {perm, shared};
        return {};
    }
    perm_update t;
    t.set_edge(*this, {perm, shared});
    return finish(t, {node_.get()});
}

namespace {

/// Whether `n` is `top` or below it through any child edge: moving an edge of `n` onto `top`
/// would make a loop (QEMU's should_update_child in block.c: a copy-before-write filter whose
/// target has the filtered node as its backing image keeps that backing link on the node).
bool below_or_same(const node& top, const node* n)
{
    std::vector<const node*> todo{&top};
    std::set<const node*> seen;
    while (!todo.empty()) {
        const node* i = todo.back();
        todo.pop_back();
        if (i == n)
            return true;
        if (!seen.insert(i).second)
            continue;
        for (const auto& e : i->children())
            if (e->get())
                todo.push_back(e->get());
    }
    return false;
}

} // namespace

qapi::result<void> replace_node(node& from, const std::shared_ptr<node>& to)
{
    assert(to && to.get() != &from);
    auto keep = from.shared_from_this();
    perm_update t;
    // Copy: move_edge edits from.parents_ while we walk it.
    std::vector<edge*> parents = from.parents();
    for (edge* e : parents)
        if (e->kind() != parent_kind::job && !(e->parent_node() && below_or_same(*to, e->parent_node())))
            t.move_edge(*e, to);
    auto r = finish(t, {&from, to.get()});
    if (r)
        from.check_unused();
    return r;
}

qapi::result<void> drop_filter(node& filter)
{
    assert(filter.is_filter() && filter.primary_child());
    if (auto r = replace_node(filter, filter.primary_child()->shared_from_this()); !r)
        return r;
    for (const auto& e : filter.children())
        e->detach();
    return {};
}

qapi::result<void> node::refresh_permissions()
{
    perm_update t;
    return finish(t, {this});
}

} // namespace bjd::block
