// SPDX-License-Identifier: MIT
// The block graph: opening nodes from BlockdevOptions, deleting them, looking them up.
#include "bjd/block/graph.hpp"

#include "bjd/block/driver.hpp"
#include "bjd/log.hpp"
#include "bjd/qapi/types.hpp"

#include <algorithm>
#include <cassert>
#include <cctype>

namespace bjd::block {

namespace {

bool id_wellformed(std::string_view id)
{
    if (id.empty() || !std::isalpha(static_cast<unsigned char>(id[0])))
        return false;
    return std::all_of(id.begin(), id.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
    });
}

/// The options a child inherits from its parent unless it sets them itself (QEMU's
/// bdrv_inherited_options: read-only, cache.*, discard, detect-zeroes pass down).
struct inherited {
    bool read_only = false;
    bool cache_direct = false;
    bool cache_no_flush = false;
    bool discard_unmap = false;
};

qapi::result<node_options> common_options(const qapi::blockdev_options& o, const inherited& inh, std::string name)
{
    node_options n;
    n.name = std::move(name);
    n.read_only = o.read_only.value_or(inh.read_only);
    n.cache_direct = inh.cache_direct;
    n.cache_no_flush = inh.cache_no_flush;
    if (o.cache) {
        n.cache_direct = o.cache->direct.value_or(n.cache_direct);
        n.cache_no_flush = o.cache->no_flush.value_or(n.cache_no_flush);
    }
    n.discard_unmap = o.discard ? *o.discard == qapi::blockdev_discard_options::unmap : inh.discard_unmap;
    if (o.detect_zeroes) {
        switch (*o.detect_zeroes) {
        case qapi::blockdev_detect_zeroes_options::off: n.zeroes = node_options::detect_zeroes::off; break;
        case qapi::blockdev_detect_zeroes_options::on: n.zeroes = node_options::detect_zeroes::on; break;
        case qapi::blockdev_detect_zeroes_options::unmap: n.zeroes = node_options::detect_zeroes::unmap; break;
        }
    }
    if (n.zeroes == node_options::detect_zeroes::unmap && !n.discard_unmap)
        return qapi::generic("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
    if (o.force_share.value_or(false) && !n.read_only)
        return qapi::generic("force-share=on can only be used with read-only images");
    return n;
}

} // namespace

qapi::result<void> check_node_name(std::string_view name)
{
    if (!id_wellformed(name))
        return qapi::generic("Invalid node-name: '" + std::string(name) + "'");
    if (name.size() > 31)
        return qapi::generic("Node name too long");
    return {};
}

graph::graph(io::engine& engine, io::engine& threads) : engine_(engine), threads_(threads) {}

graph::~graph()
{
    // Drop nodes newest first so parents go before their children.
    while (!nodes_.empty())
        nodes_.pop_back();
}

std::string graph::auto_name()
{
    // QEMU numbers from #block0; the counter never goes back, so names are never reused.
    for (;;) {
        std::string n = "#block" + std::to_string(next_auto_++);
        if (!find(n))
            return n;
    }
}

std::shared_ptr<node> graph::find(std::string_view name) const
{
    for (const auto& n : nodes_)
        if (n->name() == name)
            return n;
    return nullptr;
}

qapi::result<std::shared_ptr<node>> graph::lookup(std::string_view device) const
{
    if (auto n = find(device))
        return n;
    return qapi::generic("Cannot find device='" + std::string(device) + "' nor node-name='" + std::string(device) + "'");
}

void graph::insert(std::shared_ptr<node> n)
{
    assert(n && !n->name().empty() && !find(n->name()));
    nodes_.push_back(std::move(n));
}

void graph::erase(const node& n)
{
    nodes_.erase(std::remove_if(nodes_.begin(), nodes_.end(), [&](const auto& p) { return p.get() == &n; }),
                 nodes_.end());
}

std::vector<std::shared_ptr<node>> graph::nodes() const { return nodes_; }

asio::awaitable<qapi::result<std::shared_ptr<node>>> graph::add(const qapi::blockdev_options& opts)
{
    auto r = co_await open(opts, true);
    if (r)
        (*r)->set_monitor_owned(true);
    co_return r;
}

namespace {

/// Opens `o` and its inline children depth first. Registered nodes are collected in `made`
/// so that a failure halfway leaves the graph as it was.
struct opener {
    graph& g;
    std::vector<std::shared_ptr<node>> made;

    qapi::result<std::shared_ptr<node>> child_ref(const qapi::blockdev_ref& ref, const inherited& inh)
    {
        if (const auto* name = std::get_if<std::string>(&ref))
            return g.lookup(*name);
        return open_one(*std::get<qapi::box<qapi::blockdev_options>>(ref), inh, false);
    }

    qapi::result<std::shared_ptr<node>> open_one(const qapi::blockdev_options& o, const inherited& inh, bool top)
    {
        std::string name;
        if (o.node_name) {
            name = *o.node_name;
            if (auto r = check_node_name(name); !r)
                return r.error();
            if (g.find(name) || std::any_of(made.begin(), made.end(), [&](auto& n) { return n->name() == name; }))
                return qapi::generic("Duplicate nodes with node-name='" + name + "'");
        } else if (top) {
            return qapi::generic("'node-name' must be specified for the root node");
        } else {
            name = g.auto_name();
        }
        auto common = common_options(o, inh, name);
        if (!common)
            return common.error();
        inherited mine{common->read_only, common->cache_direct, common->cache_no_flush, common->discard_unmap};

        qapi::result<std::shared_ptr<node>> n = qapi::generic("Driver not supported");
        if (o.u.file) {
            const auto& f = *o.u.file;
            file_open_options fo;
            fo.filename = f.filename;
            auto aio = f.aio.value_or(qapi::blockdev_aio_options::io_uring);
            if (aio == qapi::blockdev_aio_options::native && !common->cache_direct)
                return qapi::generic("aio=native was specified, but it requires cache.direct=on, which was not specified.");
            fo.use_uring = aio != qapi::blockdev_aio_options::threads;
            fo.locking = f.locking.value_or(qapi::on_off_auto::auto_) != qapi::on_off_auto::off;
            n = open_file(std::move(*common), fo, fo.use_uring ? g.engine() : g.thread_engine());
        } else if (o.u.raw) {
            const auto& r = *o.u.raw;
            auto file = child_ref(r.file, mine);
            if (!file)
                return file.error();
            std::optional<std::uint64_t> size;
            if (r.size) {
                if (*r.size < 0)
                    return qapi::generic("size must be a non-negative number");
                size = static_cast<std::uint64_t>(*r.size);
            }
            std::int64_t offset = r.offset.value_or(0);
            if (offset < 0)
                return qapi::generic("offset must be a non-negative number");
            n = open_raw(std::move(*common), *file, static_cast<std::uint64_t>(offset), size);
        } else if (o.u.null_co || o.u.null_aio) {
            const auto& nu = o.u.null_co ? *o.u.null_co : *o.u.null_aio;
            std::int64_t size = nu.size.value_or(std::int64_t(1) << 30);
            if (size < 0)
                return qapi::generic("size must be a non-negative number");
            n = open_null(std::move(*common), o.u.null_co ? "null-co" : "null-aio", static_cast<std::uint64_t>(size),
                          nu.latency_ns.value_or(0), nu.read_zeroes.value_or(false));
        }
        if (n)
            made.push_back(*n);
        return n;
    }
};

} // namespace

asio::awaitable<qapi::result<std::shared_ptr<node>>> graph::open(const qapi::blockdev_options& opts, bool top_level)
{
    opener op{*this, {}};
    auto r = op.open_one(opts, inherited{}, top_level);
    if (!r)
        co_return r;   // nodes made so far die with `op`
    for (auto& n : op.made)
        insert(n);
    log::get("block")->info("opened node '{}' (driver {}, {})", (*r)->name(), (*r)->driver(), (*r)->filename());
    co_return r;
}

qapi::result<void> graph::del(std::string_view node_name)
{
    auto n = find(node_name);
    if (!n)
        return qapi::generic("Failed to find node with node-name='" + std::string(node_name) + "'");
    const std::string name(node_name);
    for (const edge* e : n->parents())
        if (e->kind() != parent_kind::node)
            return qapi::generic("Node " + name + " is in use");
    if (!n->blocker().empty())
        return qapi::generic("Node '" + name + "' is busy: " + n->blocker());
    if (!n->monitor_owned())
        return qapi::generic("Node " + name + " is not owned by the monitor");
    if (!n->parents().empty())
        return qapi::generic("Block device " + name + " is in use");

    // Children created inline with this node go with it, unless something else holds them.
    std::vector<std::weak_ptr<node>> candidates;
    for (const auto& c : n->children())
        candidates.push_back(c->shared());
    erase(*n);
    n.reset();
    while (!candidates.empty()) {
        auto c = candidates.back().lock();
        candidates.pop_back();
        if (!c || c->monitor_owned() || !c->parents().empty())
            continue;
        for (const auto& cc : c->children())
            candidates.push_back(cc->shared());
        erase(*c);
    }
    log::get("block")->info("deleted node '{}'", name);
    return {};
}

} // namespace bjd::block
