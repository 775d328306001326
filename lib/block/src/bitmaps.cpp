// SPDX-License-Identifier: MIT
#include "bjd/block/bitmaps.hpp"

#include "bjd/block/graph.hpp"

#include <bit>
#include <functional>

namespace bjd::block {

namespace {

/// QEMU's block_dirty_bitmap_lookup: the node by drive or node name, then the bitmap on it.
qapi::result<std::pair<std::shared_ptr<node>, std::shared_ptr<named_bitmap>>> lookup(graph& g,
                                                                                     std::string_view node_ref,
                                                                                     const std::string& name)
{
    auto n = g.lookup(node_ref);
    if (!n)
        return qapi::generic("Node '" + std::string(node_ref) + "' not found");
    auto b = (*n)->find_bitmap(name);
    if (!b)
        return qapi::generic("Dirty bitmap '" + name + "' not found");
    return std::pair{*n, std::move(b)};
}

} // namespace

std::optional<dirty_bitmap_info> named_bitmap::bitmap_info() const
{
    dirty_bitmap_info i;
    i.name = name_;
    i.count = bits_.count();
    i.granularity = static_cast<std::uint32_t>(bits_.granularity());
    i.recording = enabled_;
    i.busy = busy_;
    i.persistent = persistent_;
    i.inconsistent = inconsistent_;
    return i;
}

qapi::result<void> check_bitmap(const named_bitmap& b, unsigned need)
{
    if ((need & bitmap_not_busy) && b.busy())
        return qapi::generic("Bitmap '" + b.name() + "' is currently in use by another operation and cannot be used");
    if ((need & bitmap_writable) && b.readonly())
        return qapi::generic("Bitmap '" + b.name() + "' is readonly and cannot be modified");
    // QEMU adds the hint "Try block-dirty-bitmap-remove to delete this bitmap from disk",
    // which QMP does not carry.
    if ((need & bitmap_consistent) && b.inconsistent())
        return qapi::generic("Bitmap '" + b.name() + "' is inconsistent and cannot be used");
    return {};
}

qapi::result<void> bitmap_add(graph& g, std::string_view node_ref, const std::string& name,
                              std::optional<std::uint32_t> granularity, bool persistent, bool disabled)
{
    if (name.empty())
        return qapi::generic("Bitmap name cannot be empty");
    auto found = g.lookup(node_ref);
    if (!found)
        return found.error();
    node& n = **found;
    if (granularity && (*granularity < 512 || !std::has_single_bit(*granularity)))
        return qapi::generic("Granularity must be power of 2 and at least 512");
    const std::uint64_t gran = granularity ? *granularity : n.default_bitmap_granularity();
    if (persistent) {
        // QEMU stores persistent bitmaps in qcow2 (v3) images only; the driver decides.
        if (auto r = n.can_store_new_bitmap(name, gran); !r)
            return r;
    }
    if (n.find_bitmap(name))
        return qapi::generic("Bitmap already exists: " + name);
    if (name.size() > max_bitmap_name)
        return qapi::generic("Bitmap name too long: " + name);
    auto b = n.add_bitmap(name, gran);
    b->set_enabled(!disabled);
    b->set_persistent(persistent);
    return {};
}

namespace {

/// `lookup`, then `check_bitmap(need)`: what every command that changes one checks.
qapi::result<std::pair<std::shared_ptr<node>, std::shared_ptr<named_bitmap>>> lookup_checked(graph& g,
                                                                                             std::string_view node_ref,
                                                                                             const std::string& name,
                                                                                             unsigned need)
{
    auto found = lookup(g, node_ref, name);
    if (!found)
        return found.error();
    if (auto r = check_bitmap(*found->second, need); !r)
        return r.error();
    return found;
}

/// block_dirty_bitmap_remove's check: an inconsistent bitmap may (and should) be removed.
constexpr unsigned remove_need = bitmap_not_busy | bitmap_writable;

} // namespace

qapi::result<void> bitmap_remove(graph& g, std::string_view node_ref, const std::string& name)
{
    auto found = lookup_checked(g, node_ref, name, remove_need);
    if (!found)
        return found.error();
    found->first->remove_bitmap(*found->second);
    return {};
}

qapi::result<void> bitmap_clear(graph& g, std::string_view node_ref, const std::string& name)
{
    auto found = lookup_checked(g, node_ref, name, bitmap_changeable);
    if (!found)
        return found.error();
    found->second->bits().clear();
    return {};
}

qapi::result<void> bitmap_enable(graph& g, std::string_view node_ref, const std::string& name, bool enable)
{
    auto found = lookup_checked(g, node_ref, name, bitmap_usable);
    if (!found)
        return found.error();
    found->second->set_enabled(enable);
    return {};
}

qapi::result<void> bitmap_merge(graph& g, std::string_view node_ref, const std::string& target,
                                const std::vector<bitmap_ref>& sources)
{
    auto found = lookup(g, node_ref, target);
    if (!found)
        return found.error();
    auto& [n, dst] = *found;
    // Into a scratch copy first, so that the target is unchanged on failure.
    dirty_bitmap acc(dst->bits().size(), dst->bits().granularity());
    for (const auto& s : sources) {
        std::shared_ptr<named_bitmap> src;
        if (!s.node) {
            src = n->find_bitmap(s.name);
            if (!src)
                return qapi::generic("Dirty bitmap '" + s.name + "' not found");
        } else {
            auto other = lookup(g, *s.node, s.name);
            if (!other)
                return other.error();
            src = other->second;
        }
        // QEMU 7.2 merges each source into the target in turn (bdrv_merge_dirty_bitmap): the
        // target's checks, the source's, then the sizes.
        if (auto r = check_bitmap(*dst, bitmap_changeable); !r)
            return r;
        if (auto r = check_bitmap(*src, bitmap_usable); !r)
            return r;
        if (src->bits().size() != acc.size())
            return qapi::generic("Bitmaps are of different sizes (destination size is " + std::to_string(acc.size()) +
                                 ", source size is " + std::to_string(src->bits().size()) + ") and can't be merged");
        acc.merge(src->bits());
    }
    if (sources.empty())   // QEMU 7.2 crashes here (merge-empty.md); checked as for any merge
        if (auto r = check_bitmap(*dst, bitmap_changeable); !r)
            return r;
    dst->bits().merge(acc);
    return {};
}

qapi::result<std::shared_ptr<named_bitmap>> find_export_bitmap(node& n, const std::string& name, bool writable_export)
{
    // QEMU looks down bdrv_filter_or_cow_bs: a filter's child or a format's backing node.
    node* at = &n;
    std::shared_ptr<named_bitmap> b;
    while (at) {
        if ((b = at->find_bitmap(name)))
            break;
        at = at->is_filter() ? at->primary_child() : at->backing();
    }
    if (!b)
        return qapi::generic("Bitmap '" + name + "' is not found");
    if (!writable_export && !at->read_only() && b->enabled())
        return qapi::generic("Enabled bitmap '" + name + "' incompatible with readonly export");
    if (auto r = check_bitmap(*b, bitmap_usable); !r)
        return r.error();
    return b;
}

// ---- transaction actions ---------------------------------------------------------------------

namespace {

/// An action whose prepare is one synchronous step and whose abort undoes it.
class bitmap_action final : public transaction_action {
public:
    using step = std::function<qapi::result<void>()>;
    bitmap_action(step prepare, std::function<void()> abort, std::function<void()> commit = {})
        : prepare_(std::move(prepare)), abort_(std::move(abort)), commit_(std::move(commit)) {}

    asio::awaitable<qapi::result<void>> prepare() override { co_return prepare_(); }
    asio::awaitable<void> commit() override
    {
        if (commit_)
            commit_();
        co_return;
    }
    void abort() override { abort_(); }

private:
    step prepare_;
    std::function<void()> abort_, commit_;
};

/// Restores a bitmap's bits on abort (clear, merge), when the lookup found one.
std::unique_ptr<transaction_action> restoring_action(graph& g, std::string node_ref, std::string name,
                                                     std::function<qapi::result<void>()> change)
{
    struct saved {
        std::shared_ptr<named_bitmap> b;
        std::optional<dirty_bitmap> bits;
    };
    auto st = std::make_shared<saved>();
    return std::make_unique<bitmap_action>(
        [&g, node_ref = std::move(node_ref), name = std::move(name), st, change = std::move(change)]() -> qapi::result<void> {
            if (auto found = lookup(g, node_ref, name)) {
                st->b = found->second;
                st->bits = st->b->bits();
            }
            return change();
        },
        [st] {
            if (st->b && st->bits)
                st->b->bits() = *st->bits;
        });
}

} // namespace

std::unique_ptr<transaction_action> bitmap_add_action(graph& g, std::string node_ref, std::string name,
                                                      std::optional<std::uint32_t> granularity, bool persistent,
                                                      bool disabled)
{
    return std::make_unique<bitmap_action>(
        [&g, node_ref, name, granularity, persistent, disabled] {
            return bitmap_add(g, node_ref, name, granularity, persistent, disabled);
        },
        [&g, node_ref, name] {
            if (auto found = lookup(g, node_ref, name))
                found->first->remove_bitmap(*found->second);
        });
}

std::unique_ptr<transaction_action> bitmap_remove_action(graph& g, std::string node_ref, std::string name)
{
    auto held = std::make_shared<std::pair<std::shared_ptr<node>, std::shared_ptr<named_bitmap>>>();
    return std::make_unique<bitmap_action>(
        [&g, node_ref = std::move(node_ref), name = std::move(name), held]() -> qapi::result<void> {
            auto found = lookup_checked(g, node_ref, name, remove_need);
            if (!found)
                return found.error();
            *held = *found;
            held->second->set_busy(true);   // nobody else may use it until the outcome is known
            return {};
        },
        [held] { held->second->set_busy(false); },
        [held] {
            held->second->set_busy(false);
            held->first->remove_bitmap(*held->second);
        });
}

std::unique_ptr<transaction_action> bitmap_clear_action(graph& g, std::string node_ref, std::string name)
{
    auto change = [&g, node_ref, name] { return bitmap_clear(g, node_ref, name); };
    return restoring_action(g, std::move(node_ref), std::move(name), std::move(change));
}

std::unique_ptr<transaction_action> bitmap_enable_action(graph& g, std::string node_ref, std::string name, bool enable)
{
    auto was = std::make_shared<std::shared_ptr<named_bitmap>>();
    auto before = std::make_shared<bool>(false);
    return std::make_unique<bitmap_action>(
        [&g, node_ref = std::move(node_ref), name = std::move(name), enable, was, before]() -> qapi::result<void> {
            if (auto found = lookup(g, node_ref, name)) {
                *was = found->second;
                *before = found->second->enabled();
            }
            return bitmap_enable(g, node_ref, name, enable);
        },
        [was, before] {
            if (*was)
                (*was)->set_enabled(*before);
        });
}

std::unique_ptr<transaction_action> bitmap_merge_action(graph& g, std::string node_ref, std::string target,
                                                        std::vector<bitmap_ref> sources)
{
    auto change = [&g, node_ref, target, sources = std::move(sources)] { return bitmap_merge(g, node_ref, target, sources); };
    return restoring_action(g, std::move(node_ref), std::move(target), std::move(change));
}

} // namespace bjd::block
