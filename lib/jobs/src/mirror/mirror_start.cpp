// SPDX-License-Identifier: MIT
// blockdev-mirror / drive-mirror: argument checks in QEMU 7.2's order (QEMU's blockdev.c, blockdev_mirror_common), target
// creation for drive-mirror, filter insertion, job creation and start.
#include "bjd/block/driver.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/jobs/mirror.hpp"
#include "bjd/log.hpp"
#include "copy/job_nodes.hpp"
#include "mirror/mirror_job.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <unistd.h>

namespace bjd::jobs {

using detail::mirror_job;
using detail::mirror_setup;
using detail::mirror_top;
using detail::is_root;

std::uint32_t default_granularity(std::uint32_t cluster) noexcept
{
    if (cluster == 0)
        return 64 * 1024;
    return std::clamp<std::uint32_t>(cluster, 4096, 64 * 1024);
}

std::uint64_t effective_buf_size(std::int64_t buf_size, std::uint64_t granularity) noexcept
{
    std::uint64_t b = buf_size == 0 ? std::uint64_t(16) << 20 : static_cast<std::uint64_t>(buf_size);
    return (b + granularity - 1) / granularity * granularity;
}

namespace {

/// drive-mirror's target: a raw node over a file node, created (absolute-paths: created or
/// truncated to `size`) or opened as it is (existing).
qapi::result<std::shared_ptr<block::node>> open_drive_target(block::graph& g, const mirror_params& p,
                                                             const block::node& source)
{
    // QEMU: `format`, else the source's format (absolute-paths) or a probe (existing). blockjobd
    // creates and opens raw targets only, and says so rather than silently changing format.
    // (qcow2 targets are made by co_start_mirror, mirror_target.cpp.)
    std::string fmt = p.format ? *p.format
                               : (p.mode == qapi::new_image_mode::existing ? "raw" : std::string(source.driver()));
    if (fmt != "raw" && fmt != "file")
        return qapi::generic("drive-mirror target format '" + fmt + "' is not supported (only raw and qcow2)");
    if (p.node_name) {
        if (auto r = block::check_node_name(*p.node_name); !r)
            return r.error();
        if (g.find(*p.node_name))
            return qapi::generic("Duplicate nodes with node-name='" + *p.node_name + "'");
    }
    if (p.mode == qapi::new_image_mode::absolute_paths) {
        int fd = ::open(p.target.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0 || ::ftruncate(fd, 0) < 0 || ::ftruncate(fd, static_cast<off_t>(source.size())) < 0) {
            int e = errno;
            if (fd >= 0)
                ::close(fd);
            return qapi::generic("Could not create '" + p.target + "': " + std::strerror(e));
        }
        ::close(fd);
    }
    // The source's open flags, read-write (QEMU's blockdev.c, blockdev_mirror_common).
    const block::node_options file_opts = detail::target_file_options(g, source);
    auto file = detail::open_target_file(g, file_opts, p.target);
    if (!file)
        return file.error();
    block::node_options raw_opts = file_opts;
    raw_opts.name = p.node_name ? *p.node_name : g.auto_name();
    auto raw = block::open_raw(raw_opts, *file, 0, std::nullopt);
    if (!raw)
        return raw.error();
    g.insert(*file);
    g.insert(*raw);
    return *raw;
}

} // namespace

qapi::result<void> detail::start_prepared(manager& m, block::graph& g, const mirror_params& p,
                                          std::shared_ptr<block::node> pre_target,
                                          std::shared_ptr<block::node> deferred_backing)
{
    // 2. device
    auto src = g.lookup(p.device);
    if (!src)
        return src.error();
    std::shared_ptr<block::node> source = *src;
    if (!is_root(*source))
        return qapi::generic("Need a root block node");

    // 3. target (drive-mirror: early blocker check, then create/open the file)
    std::shared_ptr<block::node> target;
    bool opened_target = false;
    if (p.drive) {
        if (auto r = source->check_op(block::block_op::other); !r)
            return r;
        if (p.replaces && !p.node_name)
            return qapi::generic("a node-name must be provided when replacing a named node of the graph");
        auto t = pre_target ? qapi::result<std::shared_ptr<block::node>>(pre_target) : open_drive_target(g, p, *source);
        if (!t)
            return t.error();
        target = *t;
        opened_target = true;
    } else {
        auto t = g.lookup(p.target);
        if (!t)
            return t.error();
        target = *t;
    }
    // From here on a drive-mirror target must go away again if a check fails.
    auto fail = [&](qapi::error e) -> qapi::result<void> {
        if (opened_target)
            g.close_later(m.loop().get_executor(), target);
        return e;
    };

    // 4. granularity: range before power of two
    std::uint32_t gran = p.granularity;
    if (gran != 0 && (gran < 512 || gran > 64u * 1024 * 1024))
        return fail(qapi::generic("Parameter 'granularity' expects a value in range [512B, 64MB]"));
    if (gran != 0 && !std::has_single_bit(gran))
        return fail(qapi::generic("Parameter 'granularity' expects a power of 2"));

    // 5. op blockers
    if (auto r = source->check_op(block::block_op::other); !r)
        return fail(r.error());
    if (auto r = target->check_op(block::block_op::other); !r)
        return fail(r.error());

    // 6. sync=top without backing is full
    auto sync = p.sync;
    if (sync == qapi::mirror_sync_mode::top && !source->backing())
        sync = qapi::mirror_sync_mode::full;

    // 7. replaces
    if (p.replaces) {
        auto rep = g.find(*p.replaces);
        if (!rep)
            return fail(qapi::generic("Failed to find node with node-name='" + *p.replaces + "'"));
        // QEMU's bdrv_recurse_can_replace: the source itself, or a node below it through
        // filters only.
        bool reachable = false;
        for (const block::node* n = source.get(); n && !reachable; n = n->is_filter() ? n->primary_child() : nullptr)
            reachable = n == rep.get();
        if (!reachable)
            return fail(qapi::generic("Cannot replace '" + *p.replaces + "' by a node mirrored from '" +
                                      source->name() +
                                      "', because it cannot be guaranteed that doing so would not lead to an "
                                      "abrupt change of visible data"));
        if (rep->size() != source->size())
            return fail(qapi::generic("cannot replace image with a mirror image of different size"));
    }

    // 8. sync modes mirror does not have
    if (sync == qapi::mirror_sync_mode::incremental || sync == qapi::mirror_sync_mode::bitmap)
        return fail(qapi::generic("Sync mode '" + std::string(qapi::to_string(sync)) + "' not supported"));

    // 9. buf-size
    if (p.buf_size < 0)
        return fail(qapi::generic("Invalid parameter 'buf-size'"));
    if (gran == 0)
        gran = default_granularity(target->cluster_size());
    // A target whose backing file is attached only at completion must get whole clusters:
    // a partial one would be completed with zeroes instead of the backing's data.
    // drive-mirror mode=existing opens a qcow2 target without the backing file its header
    // names; the chain is opened at the end (QEMU's MIRROR_OPEN_BACKING_CHAIN).
    const block::qcow2_image_info* tinfo = opened_target ? block::qcow2_info(*target) : nullptr;
    const bool header_backing = p.mode == qapi::new_image_mode::existing && tinfo && !tinfo->backing_file.empty() &&
                                !target->backing();
    if (deferred_backing || header_backing)
        gran = std::max(gran, target->cluster_size());

    // 10. same node
    if (source == target)
        return fail(qapi::generic("Can't mirror node into itself"));

    // 11. filter node
    if (p.filter_node_name)
        if (auto r = detail::check_filter_name(g, *p.filter_node_name); !r)
            return fail(r.error());

    // 12. job (QEMU's default id is the BlockBackend name; a bare node has none: "")
    mirror_setup s;
    s.graph = &g;
    s.source = source;
    s.target = target;
    s.replaces = p.replaces;
    s.sync = sync;
    s.copy_mode = p.copy_mode;
    s.on_source_error = p.on_source_error;
    s.on_target_error = p.on_target_error;
    s.granularity = gran;
    s.buf_size = static_cast<std::uint64_t>(p.buf_size);
    s.unmap = p.unmap;
    s.zero_target = sync == qapi::mirror_sync_mode::full && !p.target_is_zero &&
                    (!p.drive || p.mode == qapi::new_image_mode::existing || !target->zero_init());
    s.target_is_zero = p.target_is_zero;
    s.deferred_backing = std::move(deferred_backing);
    s.open_header_backing = header_backing;
    s.release_target = opened_target;
    s.resume = p.resume;
    s.start_paused = p.start_paused;
    s.restore_note = p.restore_note;
    // A job carried on from saved progress must not zero the target again.
    if (p.resume)
        s.zero_target = false;
    // 13. speed, 14. permissions
    if (auto r = launch(m, std::move(s), p.job_id.value_or(""),
                        {.auto_finalize = p.auto_finalize, .auto_dismiss = p.auto_dismiss}, p.speed,
                        p.filter_node_name);
        !r)
        return fail(r.error());
    return {};
}

qapi::result<void> detail::launch(manager& m, mirror_setup s, const std::string& id, const job_options& o,
                                  std::int64_t speed, const std::optional<std::string>& filter_node_name)
{
    block::graph& g = *s.graph;
    // Requests must also suit O_DIRECT on both sides.
    s.granularity = std::max<std::uint64_t>({s.granularity, s.source->request_alignment(),
                                             s.target->request_alignment()});
    // buf-size left to the daemon: QEMU's 16 MiB to start with, more while that is faster.
    if (s.buf_size == 0)
        s.buf_size_max = effective_buf_size(static_cast<std::int64_t>(auto_buf_size_max), s.granularity);
    s.buf_size = effective_buf_size(static_cast<std::int64_t>(s.buf_size), s.granularity);
    block::node_options fo = s.source->options();
    fo.name = filter_node_name ? *filter_node_name : g.auto_name();
    fo.zeroes = block::node_options::detect_zeroes::off;
    fo.discard_unmap = true;   // pass discards through; the source applies its own policy
    s.filter = std::make_shared<mirror_top>(fo, s.source, !filter_node_name, m.loop().get_executor());
    const std::string what = fmt::format("{} -> {} (sync {})", s.source->name(), s.target->name(),
                                         qapi::to_string(s.sync));
    const job_type type = s.type;
    const bool start_paused = s.start_paused;
    const std::uint64_t max_window = s.buf_size_max;
    std::optional<std::string> note = s.restore_note;

    auto drv = std::make_unique<mirror_job>(std::move(s), m.loop().get_executor());
    mirror_job* mj = drv.get();
    // The job exists from here: created, then null on failure.
    auto created = m.create_block_job(id, type, std::move(drv), o, speed);
    if (!created)
        return created.error();
    job& j = **created;
    // The filter above the source, reading it, writing the target ("Block node is read-only",
    // a conflict with another user, an image lock).
    if (auto r = mj->attach(j); !r) {
        m.early_fail(j);
        return r.error();
    }
    if (note)
        j.set_restore_note(std::move(*note));
    if (start_paused)
        (void)j.user_pause();   // created accepts pause: the job parks before it copies
    m.start(j);
    log::get("jobs")->info("{} '{}': {}, granularity {}, buf-size {}{}", qapi::to_string(type), j.id(), what,
                           mj->granularity(), mj->buf_size(),
                           max_window > mj->buf_size() ? fmt::format(" (up to {} while that is faster)", max_window) : "");
    return {};
}

asio::awaitable<qapi::result<mirror_progress>> save_mirror_progress(job& j)
{
    auto* mj = dynamic_cast<mirror_job*>(&j.driver());
    if (!mj)
        co_return qapi::generic("not a mirror job");
    co_return co_await mj->save_progress(j);
}

qapi::result<void> start_mirror(manager& m, block::graph& g, const mirror_params& p)
{
    return detail::start_prepared(m, g, p, nullptr, nullptr);
}

} // namespace bjd::jobs
