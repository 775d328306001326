// SPDX-License-Identifier: MIT
// The block graph: opening nodes from BlockdevOptions, deleting them, looking them up.
#include "bjd/block/graph.hpp"
#include "bjd/crypto/objects.hpp"

#include "bjd/block/driver.hpp"
#include "bjd/id.hpp"
#include "bjd/log.hpp"
#include "bjd/qapi/types.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <map>

namespace bjd::block {

namespace {

/// The options a child inherits from its parent unless it sets them itself (QEMU's
/// bdrv_inherited_options: read-only, cache.*, discard, detect-zeroes pass down).
struct inherited {
    bool read_only = false;
    bool auto_read_only = false;
    bool cache_direct = false;
    bool cache_no_flush = false;
    bool discard_unmap = false;
};

qapi::result<node_options> common_options(const qapi::blockdev_options& o, const inherited& inh, std::string name)
{
    node_options n;
    n.name = std::move(name);
    n.read_only = o.read_only.value_or(inh.read_only);
    n.auto_read_only = o.auto_read_only.value_or(inh.auto_read_only);
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
    n.force_share = o.force_share.value_or(false);
    if (n.force_share && !n.read_only)
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
    alive_.reset();   // nodes that become unused now are not closed one by one
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
    const std::optional<std::string> name{std::string(device)};
    return lookup(name, name);
}

qapi::result<std::shared_ptr<node>> graph::lookup(const std::optional<std::string>& device,
                                                  const std::optional<std::string>& node_name) const
{
    // A drive of that name first, then a node.
    if (device) {
        if (auto b = drives().find(*device)) {
            if (!b->medium())
                return qapi::generic("Device '" + *device + "' has no medium");
            return b->medium_shared();
        }
    }
    if (node_name) {
        if (auto n = find(*node_name))
            return n;
    }
    return qapi::generic("Cannot find device='" + device.value_or("") + "' nor node-name='" + node_name.value_or("") +
                         "'");
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
    std::vector<std::string> auto_names;   ///< names this opener generated (exempt from checks)

    asio::awaitable<qapi::result<std::shared_ptr<node>>> child_ref(const qapi::blockdev_ref& ref, const inherited& inh)
    {
        if (const auto* name = std::get_if<std::string>(&ref))
            co_return g.lookup(*name);
        co_return co_await open_one(*std::get<qapi::box<qapi::blockdev_options>>(ref), inh, false);
    }

    asio::awaitable<qapi::result<std::shared_ptr<node>>> open_one(const qapi::blockdev_options& o,
                                                                  const inherited& inh, bool top)
    {
        std::string name;
        if (o.node_name)
            name = *o.node_name;
        else if (top)
            co_return qapi::generic("'node-name' must be specified for the root node");
        else
            auto_names.push_back(name = g.auto_name());
        auto common = common_options(o, inh, name);
        if (!common)
            co_return common.error();
        inherited mine{common->read_only, common->auto_read_only, common->cache_direct, common->cache_no_flush,
                       common->discard_unmap};

        // QEMU opens a format's file child before it names the node, so a bad child is reported
        // before a bad or duplicate name of its parent: name checks run right before each
        // driver creates its node.
        qapi::result<std::shared_ptr<node>> n = qapi::generic("Driver not supported");
        if (o.u.file) {
            if (auto r = check_name(name); !r)
                co_return r.error();
            const auto& f = *o.u.file;
            file_open_options fo;
            fo.filename = f.filename;
            auto aio = f.aio.value_or(qapi::blockdev_aio_options::io_uring);
            if (aio == qapi::blockdev_aio_options::native && !common->cache_direct)
                co_return qapi::generic("aio=native was specified, but it requires cache.direct=on, which was not specified.");
            fo.use_uring = aio != qapi::blockdev_aio_options::threads;
            fo.locking = f.locking.value_or(qapi::on_off_auto::auto_) != qapi::on_off_auto::off;
            n = open_file(std::move(*common), fo, fo.use_uring ? g.engine() : g.thread_engine());
        } else if (o.u.raw) {
            const auto& r = *o.u.raw;
            auto file = co_await child_ref(r.file, mine);
            if (!file)
                co_return file.error();
            std::optional<std::uint64_t> size;
            if (r.size) {
                if (*r.size < 0)
                    co_return qapi::generic("Parameter 'size' expects a non-negative number below 2^64");
                size = static_cast<std::uint64_t>(*r.size);
            }
            std::int64_t offset = r.offset.value_or(0);
            if (offset < 0)
                co_return qapi::generic("Parameter 'offset' expects a non-negative number below 2^64");
            if (auto rn = check_name(name); !rn)
                co_return rn.error();
            n = open_raw(std::move(*common), *file, static_cast<std::uint64_t>(offset), size);
        } else if (o.u.null_co || o.u.null_aio) {
            const auto& nu = o.u.null_co ? *o.u.null_co : *o.u.null_aio;
            std::int64_t size = nu.size.value_or(std::int64_t(1) << 30);
            if (size < 0)   // QEMU 7.2 aborts here; we refuse
                co_return qapi::generic("Parameter 'size' expects a non-negative number below 2^64");
            if (auto r = check_name(name); !r)
                co_return r.error();
            n = open_null(std::move(*common), o.u.null_co ? "null-co" : "null-aio", static_cast<std::uint64_t>(size),
                          nu.latency_ns.value_or(0), nu.read_zeroes.value_or(false));
        } else if (o.u.qcow2) {
            n = co_await open_qcow2_node(*o.u.qcow2, std::move(*common), mine);
        } else if (o.u.nbd) {
            const auto& nb = *o.u.nbd;
            nbd_open_options no;
            no.meta_context = nb.x_dirty_bitmap.value_or("");
            no.connections = std::max<std::uint32_t>(nb.multi_conn.value_or(no.connections), 1);
            if (nb.server.u.unix) {
                no.server.path = nb.server.u.unix->path;
            } else if (nb.server.u.inet) {
                no.server.unix_socket = false;
                no.server.host = nb.server.u.inet->host;
                no.server.port = nb.server.u.inet->port;
            } else {
                co_return qapi::generic("blockjobd's nbd driver connects to unix and inet addresses only");
            }
            no.export_name = nb.export_.value_or("");
            no.reconnect_delay = nb.reconnect_delay.value_or(0);
            no.open_timeout = nb.open_timeout.value_or(0);
            if (auto r = check_name(name); !r)
                co_return r.error();
            if (nb.tls_creds) {
                // QEMU's nbd_get_tls_creds; tls-hostname (only with tls-creds) defaults to the
                // inet host, a unix socket has none.
                if (!g.objects())
                    co_return qapi::generic("No TLS credentials with id '" + *nb.tls_creds + "'");
                auto c = g.objects()->tls_creds_for(*nb.tls_creds, crypto::endpoint::client);
                if (!c)
                    co_return c.error();
                no.tls_creds = std::move(*c);
                no.tls_hostname = nb.tls_hostname.value_or(no.server.unix_socket ? std::string() : no.server.host);
            }
            n = co_await open_nbd(std::move(*common), std::move(no));
        } else if (o.u.rbd) {
            auto ro = rbd_options(*o.u.rbd, g.objects());
            if (!ro)
                co_return ro.error();
            if (auto r = check_name(name); !r)
                co_return r.error();
            n = co_await open_rbd(std::move(*common), std::move(*ro));
        } else if (o.u.blkdebug) {
            auto image = co_await child_ref(o.u.blkdebug->image, mine);
            if (!image)
                co_return image.error();
            if (auto r = check_name(name); !r)
                co_return r.error();
            n = open_blkdebug(std::move(*common), *image, *o.u.blkdebug);
        }
        if (!n)
            co_return n;
        // What the node takes on its children on its own (a writable qcow2 writes metadata),
        // with the locks that go with it: "Failed to get \"write\" lock".
        if (auto r = (*n)->refresh_permissions(); !r)
            co_return r.error();
        made.push_back(*n);
        co_return n;
    }

    qapi::result<void> check_name(const std::string& name) const
    {
        if (std::find(auto_names.begin(), auto_names.end(), name) != auto_names.end())
            return {};
        if (auto r = check_node_name(name); !r)
            return r;
        if (g.drives().find(name))
            return qapi::generic("node-name=" + name + " is conflicting with a device id");
        if (g.find(name) || std::any_of(made.begin(), made.end(), [&](auto& n) { return n->name() == name; }))
            return qapi::generic("Duplicate nodes with node-name='" + name + "'");
        return {};
    }

    // ---- qcow2 and backing chains ----

    asio::awaitable<qapi::result<std::shared_ptr<node>>> open_qcow2_node(const qapi::blockdev_options_qcow2& q,
                                                                         node_options common, const inherited& mine)
    {
        qcow2_open_options qo;
        for (auto v : {q.cache_size, q.l2_cache_size, q.refcount_cache_size})
            if (v && *v < 0)
                co_return qapi::generic("Cache sizes must not be negative");
        if (q.cache_size && q.l2_cache_size && q.refcount_cache_size)
            co_return qapi::generic("cache-size, l2-cache-size and refcount-cache-size may not be set at the same time");
        qo.l2_cache_bytes = static_cast<std::uint64_t>(q.l2_cache_size.value_or(0));
        qo.refcount_cache_bytes = static_cast<std::uint64_t>(q.refcount_cache_size.value_or(0));
        if (q.cache_size) {
            auto total = static_cast<std::uint64_t>(*q.cache_size);
            if (qo.l2_cache_bytes > total || qo.refcount_cache_bytes > total)
                co_return qapi::generic("l2-cache-size and refcount-cache-size may not exceed cache-size");
            if (!qo.l2_cache_bytes && !qo.refcount_cache_bytes)
                qo.refcount_cache_bytes = total / 4;
            if (!qo.l2_cache_bytes)
                qo.l2_cache_bytes = std::max<std::uint64_t>(1, total - qo.refcount_cache_bytes);
            else if (!qo.refcount_cache_bytes)
                qo.refcount_cache_bytes = std::max<std::uint64_t>(1, total - qo.l2_cache_bytes);
        }
        auto file = co_await child_ref(q.file, mine);
        if (!file)
            co_return file.error();
        if (auto r = check_name(common.name); !r)
            co_return r.error();
        auto n = co_await open_qcow2(std::move(common), *file, qo);
        if (!n)
            co_return n;
        auto r = co_await attach_qcow2_backing(q, mine, *file, *n);
        if (!r) {
            // The image was opened (its bitmaps marked in use): close it properly, so that a
            // failed blockdev-add leaves them consistent (QEMU's bdrv_close on the error path).
            if ((*n)->close_work())
                (void)co_await (*n)->before_close();
            (void)co_await (*n)->flush();
            co_return r.error();
        }
        co_return n;
    }

    /// The qcow2 branch of blockdev-add after the image opened: its backing child, given or
    /// from the header.
    asio::awaitable<qapi::result<void>> attach_qcow2_backing(const qapi::blockdev_options_qcow2& q, const inherited& mine,
                                                            const std::shared_ptr<node>& filenode,
                                                            const std::shared_ptr<node>& image)
    {
        const std::shared_ptr<node>* file = &filenode;
        const std::shared_ptr<node>* n = &image;
        // Backing children are read-only unless given otherwise (QEMU's bdrv_backing_options).
        inherited binh = mine;
        binh.read_only = true;
        std::shared_ptr<node> backing;
        bool from_header = false;
        if (q.backing) {
            if (const auto* ref = std::get_if<std::string>(&*q.backing)) {
                auto b = g.lookup(*ref);
                if (!b)
                    co_return qapi::generic("Could not open backing file: " + b.error().desc);
                backing = *b;
            } else if (const auto* def = std::get_if<qapi::box<qapi::blockdev_options>>(&*q.backing)) {
                auto b = co_await open_one(**def, binh, false);
                if (!b)
                    co_return qapi::generic("Could not open backing file: " + b.error().desc);
                backing = *b;
            }
        } else if (const auto* info = qcow2_info(**n); info && !info->backing_file.empty()) {
            std::vector<std::string> chain;
            char real[PATH_MAX];
            if (::realpath((*file)->filename().c_str(), real))
                chain.emplace_back(real);
            auto b = co_await open_backing_from_header((*file)->filename(), *info, binh, std::move(chain));
            if (!b)
                co_return b.error();
            backing = *b;
            from_header = true;
        }
        if (backing)
            if (auto r = set_qcow2_backing(**n, backing); !r)
                co_return r.error();
        if (from_header)
            note_backing_from_header(**n);
        co_return qapi::result<void>{};
    }

    /// Opens the backing file a qcow2 header names: relative to the image's directory, in the
    /// format the header gives (probed when absent), read-only, with "#blockN" names. `chain`
    /// holds the real paths of the images above it, to refuse loops.
    asio::awaitable<qapi::result<std::shared_ptr<node>>> open_backing_from_header(std::string image,
                                                                                  qcow2_image_info info,
                                                                                  inherited inh,
                                                                                  std::vector<std::string> chain)
    {
        constexpr std::size_t max_chain = 256;
        std::string path = info.backing_file;
        if (path.rfind("json:", 0) == 0)
            co_return qapi::generic("Could not open backing file: json: file names are not supported");
        if (!path.empty() && path[0] != '/' && image.find('/') != std::string::npos)
            path = image.substr(0, image.rfind('/') + 1) + path;
        char real[PATH_MAX];
        if (::realpath(path.c_str(), real)) {
            if (std::find(chain.begin(), chain.end(), real) != chain.end())
                co_return qapi::generic("Backing file '" + path + "' creates a loop in the backing chain");
            if (chain.size() >= max_chain)
                co_return qapi::generic("Backing chain of '" + image + "' is too deep");
            chain.emplace_back(real);
        }
        node_options fo_common;
        fo_common.name = g.auto_name();
        fo_common.read_only = true;
        fo_common.cache_direct = inh.cache_direct;
        fo_common.cache_no_flush = inh.cache_no_flush;
        fo_common.discard_unmap = inh.discard_unmap;
        file_open_options fo;
        fo.filename = path;
        auto file = open_file(fo_common, fo, g.engine());
        if (!file)
            co_return qapi::generic("Could not open backing file: " + file.error().desc);
        made.push_back(*file);
        std::string fmt = info.backing_format;
        if (fmt.empty()) {
            auto p = co_await probe_format(**file);
            if (!p)
                co_return p.error();
            fmt = *p;
        }
        node_options common = fo_common;
        common.name = g.auto_name();
        qapi::result<std::shared_ptr<node>> n = qapi::generic("");
        if (fmt == "raw") {
            n = open_raw(std::move(common), *file, 0, std::nullopt);
        } else if (fmt == "qcow2") {
            n = co_await open_qcow2(std::move(common), *file, {});
            if (n) {
                const auto* binfo = qcow2_info(**n);
                if (binfo && !binfo->backing_file.empty()) {
                    auto b = co_await open_backing_from_header(path, *binfo, inh, chain);
                    if (!b)
                        co_return b.error();
                    if (auto r = set_qcow2_backing(**n, *b); !r)
                        co_return r.error();
                    note_backing_from_header(**n);
                }
            }
        } else {
            co_return qapi::generic("Could not open backing file: unknown backing format '" + fmt + "'");
        }
        if (!n)
            co_return qapi::generic("Could not open backing file: " + n.error().desc);
        made.push_back(*n);
        co_return n;
    }
};

} // namespace

asio::awaitable<qapi::result<std::shared_ptr<node>>> graph::open(const qapi::blockdev_options& opts, bool top_level)
{
    opener op{*this, {}, {}};
    auto r = co_await op.open_one(opts, inherited{}, top_level);
    if (!r)
        co_return r;   // nodes made so far die with `op`
    for (auto& n : op.made)
        insert(n);
    log::get("block")->info("opened node '{}' (driver {}, {})", (*r)->name(), (*r)->driver(), (*r)->filename());
    co_return r;
}

asio::awaitable<qapi::result<void>> graph::open_backing_chain(node& n)
{
    const auto* info = qcow2_info(n);
    node* file = n.child("file");
    if (!info || info->backing_file.empty() || n.backing() || !file)
        co_return qapi::result<void>{};
    inherited inh;
    inh.read_only = true;
    inh.cache_direct = n.options().cache_direct;
    inh.cache_no_flush = n.options().cache_no_flush;
    inh.discard_unmap = n.options().discard_unmap;
    std::vector<std::string> chain;
    char real[PATH_MAX];
    if (::realpath(file->filename().c_str(), real))
        chain.emplace_back(real);
    opener op{*this, {}, {}};
    auto b = co_await op.open_backing_from_header(file->filename(), *info, inh, std::move(chain));
    if (!b)
        co_return b.error();   // nodes made so far die with `op`
    if (auto r = set_qcow2_backing(n, *b); !r)
        co_return r.error();
    note_backing_from_header(n);
    for (auto& m : op.made)
        insert(m);
    log::get("block")->info("node '{}': opened backing '{}'", n.name(), (*b)->filename());
    co_return qapi::result<void>{};
}

asio::awaitable<qapi::result<void>> graph::del(std::string node_name)
{
    auto n = find(node_name);
    if (!n)
        co_return qapi::generic("Failed to find node with node-name='" + node_name + "'");
    // QEMU's bdrv_has_blk: users other than nodes and jobs (whose blockers answer next).
    for (const edge* e : n->parents())
        if (e->kind() != parent_kind::node && e->kind() != parent_kind::job)
            co_return qapi::generic("Node " + node_name + " is in use");
    if (auto r = n->check_op(block_op::other); !r)
        co_return r.error();
    if (!n->monitor_owned())
        co_return qapi::generic("Node " + node_name + " is not owned by the monitor");
    if (!n->parents().empty())
        co_return qapi::generic("Block device " + node_name + " is in use");
    co_await close(std::move(n));
    log::get("block")->info("deleted node '{}'", node_name);
    co_return qapi::result<void>{};
}

std::vector<std::shared_ptr<node>> graph::take_closing(std::shared_ptr<node> n)
{
    std::vector<std::shared_ptr<node>> out;
    if (!n || find(n->name()) != n || !n->parents().empty())
        return out;
    out.push_back(std::move(n));
    auto closing = [&](const std::shared_ptr<node>& c) { return std::find(out.begin(), out.end(), c) != out.end(); };
    auto from_closing = [&](const edge* e) {
        return std::any_of(out.begin(), out.end(), [&](const auto& p) {
            return std::any_of(p->children().begin(), p->children().end(), [&](const auto& c) { return c.get() == e; });
        });
    };
    // A child joins once every edge to it comes from a closing node, so that each node is
    // listed after all of its parents; the last parent to join is the one that adds it.
    for (std::size_t i = 0; i < out.size(); ++i) {
        const node& p = *out[i];
        for (const auto& e : p.children()) {
            std::shared_ptr<node> c = e->shared();
            if (!c || c->monitor_owned() || closing(c) || find(c->name()) != c)
                continue;
            if (std::all_of(c->parents().begin(), c->parents().end(), from_closing))
                out.push_back(std::move(c));
        }
    }
    for (const auto& c : out)
        erase(*c);
    return out;
}

namespace {

bool needs_flush(const node& n)
{
    return !n.read_only() && (n.close_work() || (n.flush_on_close() && n.unflushed()));
}

/// QEMU's bdrv_close: flush a writable node, and let it go even when that fails.
asio::awaitable<void> flush_before_close(node& n)
{
    if (!needs_flush(n))
        co_return;
    result<void> r;
    try {
        if (n.close_work()) {
            r = co_await n.before_close();
            if (!r)
                log::get("block")->warn("node '{}': writing back before close failed: {}", n.name(),
                                        strerror_text(r.error()));
        }
        r = co_await n.flush();
    } catch (const std::exception& e) {
        log::get("block")->warn("node '{}': flush before close failed: {}", n.name(), e.what());
        co_return;
    }
    if (!r)
        log::get("block")->warn("node '{}': flush before close failed: {}", n.name(), strerror_text(r.error()));
}

} // namespace

asio::awaitable<void> graph::close_taken(std::vector<std::shared_ptr<node>> nodes)
{
    for (auto& n : nodes) {
        co_await flush_before_close(*n);
        log::get("block")->debug("closed node '{}'", n->name());
        n.reset();   // the last reference, unless a job still holds it: its child edges go
    }
    if (--closing_ == 0)
        for (asio::steady_timer* t : close_waiters_)
            t->cancel();
}

asio::awaitable<void> graph::close(std::shared_ptr<node> n)
{
    auto nodes = take_closing(std::move(n));
    if (nodes.empty())
        co_return;
    ++closing_;
    co_await close_taken(std::move(nodes));
}

void graph::close_later(asio::any_io_executor ex, std::shared_ptr<node> n)
{
    auto nodes = take_closing(std::move(n));
    if (std::none_of(nodes.begin(), nodes.end(), [](const auto& c) { return needs_flush(*c); })) {
        // Nothing to write back (a mirror flushed its target before it finished): let go now,
        // as QEMU's synchronous close does, so the image locks are free before the job's
        // events go out.
        for (auto& c : nodes)
            c.reset();
        return;
    }
    ++closing_;
    asio::co_spawn(std::move(ex), close_taken(std::move(nodes)), log::on_failure("block", "closing nodes"));
}

void graph::close_when_unused(asio::any_io_executor ex, const std::shared_ptr<node>& n)
{
    assert(!n->parents().empty());
    n->set_unused_hook([this, ex, alive = std::weak_ptr<bool>(alive_)](node& unused) {
        if (alive.lock())
            close_later(ex, unused.shared_from_this());
    });
}

asio::awaitable<void> graph::wait_for_closes()
{
    if (closing_ == 0)
        co_return;
    auto ex = co_await asio::this_coro::executor;
    while (closing_ > 0) {
        asio::steady_timer t(ex, asio::steady_timer::time_point::max());
        close_waiters_.push_back(&t);
        co_await t.async_wait(bjd::nothrow_awaitable);
        std::erase(close_waiters_, &t);
    }
}

asio::awaitable<void> graph::close_all()
{
    co_await wait_for_closes();
    // Parents first (Kahn's order over the registered nodes, creation order among equals):
    // a format's flush writes into its file, whose own flush must come after.
    std::map<const node*, std::size_t> waiting;   // edges from registered parents not yet flushed
    for (const auto& p : nodes_)
        for (const auto& e : p->children())
            if (e->get())
                ++waiting[e->get()];
    std::vector<std::shared_ptr<node>> order;
    std::vector<std::shared_ptr<node>> left = nodes_;
    while (!left.empty()) {
        auto it = std::find_if(left.begin(), left.end(), [&](const auto& n) { return waiting[n.get()] == 0; });
        if (it == left.end())
            it = left.begin();   // cannot happen (no cycles); flush the rest anyway
        std::shared_ptr<node> n = *it;
        left.erase(it);
        for (const auto& e : n->children())
            if (e->get() && waiting[e->get()] > 0)
                --waiting[e->get()];
        order.push_back(std::move(n));
    }
    std::size_t flushed = 0;
    for (const auto& n : order) {
        flushed += needs_flush(*n);
        co_await flush_before_close(*n);
    }
    log::get("block")->info("flushed {} writable node(s) before exit", flushed);
}

} // namespace bjd::block
