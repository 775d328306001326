// SPDX-License-Identifier: MIT
// drive-mirror targets in qcow2 format (QEMU's blockdev.c, qmp_drive_mirror): mode absolute-paths
// creates the image with the backing file the sync mode asks for and opens it without its
// chain (attached at completion, as QEMU's block/mirror.c does); mode existing opens the image without the backing
// file its header names, which is opened once the job converged.
#include "bjd/block/create.hpp"
#include "bjd/block/driver.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/jobs/mirror.hpp"
#include "copy/chain.hpp"
#include "copy/job_nodes.hpp"
#include "mirror/mirror_job.hpp"

#include <algorithm>

namespace bjd::jobs {

namespace {

std::shared_ptr<block::node> backing_of(const block::node& n)
{
    for (const auto& e : n.children())
        if (e->role() == "backing")
            return e->shared();
    return nullptr;
}

} // namespace

asio::awaitable<qapi::result<void>> co_start_mirror(manager& m, block::graph& g, const mirror_params& p)
{
    if (!p.drive)
        co_return start_mirror(m, g, p);
    auto src = g.lookup(p.device);
    if (!src)
        co_return start_mirror(m, g, p);   // the same error, in order
    std::shared_ptr<block::node> source = *src;
    const bool existing = p.mode == qapi::new_image_mode::existing;

    // Which format? absent: the source's (absolute-paths) or a probe (existing).
    std::string fmt;
    std::shared_ptr<block::node> probed_file;
    if (p.format) {
        fmt = *p.format;
    } else if (!existing) {
        fmt = std::string(source->driver());
    } else {
        auto f = detail::open_target_file(g, detail::target_file_options(g, *source), p.target);
        if (!f)
            co_return start_mirror(m, g, p);   // start_mirror reports the open error in order
        auto pr = co_await block::probe_format(**f);
        if (!pr)
            co_return pr.error();
        fmt = *pr;
        probed_file = *f;
    }
    if (fmt != "qcow2") {
        probed_file.reset();   // drop our descriptor (and its lock) before start_mirror opens it
        co_return start_mirror(m, g, p);
    }

    // The drive-mirror checks before the target exists (mirror_start.cpp repeats them).
    const bool root = std::none_of(source->parents().begin(), source->parents().end(), [](const block::edge* e) {
        return e->kind() == block::parent_kind::node || e->kind() == block::parent_kind::job;
    });
    if (!root)
        co_return qapi::generic("Need a root block node");
    if (auto r = source->check_op(block::block_op::other); !r)
        co_return r.error();
    if (p.replaces && !p.node_name)
        co_return qapi::generic("a node-name must be provided when replacing a named node of the graph");
    if (p.node_name) {
        if (auto r = block::check_node_name(*p.node_name); !r)
            co_return r.error();
        if (g.find(*p.node_name))
            co_return qapi::generic("Duplicate nodes with node-name='" + *p.node_name + "'");
    }

    std::shared_ptr<block::node> deferred;
    auto sync = p.sync;
    std::shared_ptr<block::node> src_backing = backing_of(*source);
    if (sync == qapi::mirror_sync_mode::top && !src_backing)
        sync = qapi::mirror_sync_mode::full;
    if (!existing) {
        std::string bfile, bfmt;
        if (sync == qapi::mirror_sync_mode::top) {
            deferred = src_backing;
        } else if (sync == qapi::mirror_sync_mode::none) {
            deferred = source;
        }
        if (deferred) {
            bfile = detail::image_path(*deferred);
            bfmt = std::string(deferred->driver());
        }
        auto c = co_await block::create_qcow2(g, p.target, source->size(), bfile, bfmt, 0, "drive-mirror");
        if (!c)
            co_return c.error();
    }
    std::shared_ptr<block::node> file = probed_file;
    if (!file) {
        auto f = detail::open_target_file(g, detail::target_file_options(g, *source), p.target);
        if (!f)
            co_return f.error();
        file = *f;
    }
    block::node_options qo = file->options();
    qo.name = p.node_name ? *p.node_name : g.auto_name();
    auto q = co_await block::open_qcow2(qo, file, {});
    if (!q)
        co_return q.error();
    // mode existing: the backing file its header names is opened once the job converged.
    g.insert(file);
    g.insert(*q);
    co_return detail::start_prepared(m, g, p, *q, deferred);
}

} // namespace bjd::jobs
