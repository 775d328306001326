// SPDX-License-Identifier: MIT
#include "copy/job_nodes.hpp"

#include "bjd/block/driver.hpp"
#include "bjd/block/reopen.hpp"
#include "jobs_log.hpp"

#include <boost/asio/co_spawn.hpp>

#include <algorithm>

namespace bjd::jobs::detail {

namespace {

asio::awaitable<void> reopen_back(std::shared_ptr<block::node> n, std::string what)
{
    if (auto r = co_await block::reopen_read_only(*n, true); !r)
        logger()->warn("{}: '{}' stays read-write: {}", what, n->name(), r.error().desc);
}

} // namespace

bool is_root(const block::node& n)
{
    return std::none_of(n.parents().begin(), n.parents().end(), [](const block::edge* e) {
        return e->kind() == block::parent_kind::node || e->kind() == block::parent_kind::job;
    });
}

job_nodes::job_nodes(std::string user, std::string_view type)
    : user_(std::move(user)), blocker_("block device is in use by block job: " + std::string(type))
{
}

qapi::result<void> job_nodes::hold(const std::shared_ptr<block::node>& n, const char* role, unsigned perm,
                                   unsigned shared)
{
    return add(block::parent_kind::job, n, role, perm, shared);
}

qapi::result<void> job_nodes::use(const std::shared_ptr<block::node>& n, const char* role, unsigned perm,
                                  unsigned shared)
{
    return add(block::parent_kind::anonymous, n, role, perm, shared);
}

qapi::result<void> job_nodes::add(block::parent_kind kind, const std::shared_ptr<block::node>& n, const char* role,
                                  unsigned perm, unsigned shared)
{
    auto e = std::make_unique<block::edge>(kind, user_, role);
    (void)e->set_perms(perm, shared);   // not attached yet: cannot conflict
    if (auto r = e->attach(n); !r)
        return r;
    edges_.push_back(std::move(e));
    if (kind == block::parent_kind::job) {
        n->set_blocker(blocker_);
        blocked_.push_back(n);
    }
    return {};
}

void job_nodes::release()
{
    edges_.clear();
    for (auto& n : blocked_)
        n->set_blocker({});
    blocked_.clear();
}

qapi::result<void> check_filter_name(const block::graph& g, const std::string& name)
{
    if (auto r = block::check_node_name(name); !r)
        return r;
    if (g.drives().find(name))
        return qapi::generic("node-name=" + name + " is conflicting with a device id");
    if (g.find(name))
        return qapi::generic("Duplicate nodes with node-name='" + name + "'");
    return {};
}

qapi::result<void> insert_filter(block::graph& g, const std::shared_ptr<block::node>& filter, block::node& below)
{
    g.insert(filter);
    if (auto r = block::replace_node(below, filter); !r) {
        (void)block::drop_filter(*filter);
        g.erase(*filter);
        return r;
    }
    return {};
}

void take_out_filter(block::node& filter, std::string_view what)
{
    if (auto r = block::drop_filter(filter); !r) {
        // Cannot happen for a filter whose parents took through it what they take below;
        // should it, the filter still lets go of the node, which stays usable by name.
        logger()->error("{}: cannot remove filter '{}': {}", what, filter.name(), r.error().desc);
        for (const auto& e : filter.children())
            e->detach();
    }
}

void remove_filter(block::graph& g, const asio::any_io_executor& ex, const std::shared_ptr<block::node>& filter,
                   std::string_view what)
{
    take_out_filter(*filter, what);
    g.close_later(ex, filter);
}

void restore_read_only(const asio::any_io_executor& ex, std::shared_ptr<block::node> n, std::string what)
{
    asio::co_spawn(ex, reopen_back(std::move(n), std::move(what)), log::on_failure("jobs", "reopen read-only"));
}

block::node_options target_file_options(block::graph& g, const block::node& source)
{
    block::node_options o = source.options();
    o.name = g.auto_name();
    o.read_only = false;
    o.zeroes = block::node_options::detect_zeroes::off;
    return o;
}

qapi::result<std::shared_ptr<block::node>> open_target_file(block::graph& g, const block::node_options& o,
                                                            const std::string& path)
{
    block::file_open_options fo;
    fo.filename = path;
    return block::open_file(o, fo, g.engine());
}

} // namespace bjd::jobs::detail
