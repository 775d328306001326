// SPDX-License-Identifier: MIT
// drive-backup's target (QEMU 7.2's blockdev.c drive_backup_prepare): the image is created
// unless mode=existing, with the backing file the sync mode asks for, then opened as a node
// without a node-name, read-write, discard=unmap and detect-zeroes=unmap.
#include "backup/drive_target.hpp"

#include "bjd/block/create.hpp"
#include "bjd/block/driver.hpp"
#include "bjd/block/graph.hpp"
#include "copy/chain.hpp"
#include "copy/job_nodes.hpp"

namespace bjd::jobs::detail {

namespace {

/// The image below `bs` that sync=top backs the target with: its COW backing, filters
/// skipped (QEMU's bdrv_cow_bs(bdrv_skip_filters(bs))).
std::shared_ptr<block::node> cow_below(block::node& bs)
{
    block::node* n = &bs;
    while (n && n->is_filter())
        n = n->primary_child();
    block::node* b = n ? n->cow_backing() : nullptr;
    return b ? b->shared_from_this() : nullptr;
}

} // namespace

asio::awaitable<qapi::result<std::shared_ptr<block::node>>> open_drive_backup_target(block::graph& g,
                                                                                    drive_backup_params& d)
{
    backup_params& p = d.backup;
    auto src = g.lookup(p.device, p.device);
    if (!src)
        co_return src.error();
    std::shared_ptr<block::node> bs = *src;
    const bool existing = d.mode == qapi::new_image_mode::existing;
    std::optional<std::string> fmt = d.format;
    if (!fmt && !existing)
        fmt = std::string(bs->driver());
    // The early check, before anything is created.
    if (auto r = bs->check_op(block::block_op::backup_source); !r)
        co_return r.error();

    // What the new image is backed by: the image below the source (top), or the source
    // itself (none, QEMU's set_backing_hd: the target shows the point in time).
    std::shared_ptr<block::node> backing;
    if (p.sync == qapi::mirror_sync_mode::top) {
        backing = cow_below(*bs);
        if (!backing)
            p.sync = qapi::mirror_sync_mode::full;
    }
    if (p.sync == qapi::mirror_sync_mode::none)
        backing = bs;

    if (fmt && *fmt != "raw" && *fmt != "qcow2")
        co_return qapi::generic("drive-backup target format '" + *fmt + "' is not supported (only raw and qcow2)");
    if (!existing) {
        if (*fmt == "qcow2") {
            const std::string bfile = backing ? image_path(*backing) : std::string();
            const std::string bfmt = backing ? std::string(backing->driver()) : std::string();
            if (auto r = co_await block::create_qcow2(g, d.target, bs->size(), bfile, bfmt, 0, "drive-backup"); !r)
                co_return r.error();
        } else {
            if (backing)
                co_return qapi::generic("Backing file not supported for file format 'raw'");
            block::file_create_options fc;
            fc.filename = d.target;
            fc.size = bs->size();
            if (auto r = co_await block::create_file(fc); !r)
                co_return r.error();
        }
    }

    // QEMU's drive_backup_prepare opens the target with discard=unmap, detect-zeroes=unmap.
    block::node_options fo = target_file_options(g, *bs);
    fo.auto_read_only = false;
    fo.discard_unmap = true;
    fo.zeroes = block::node_options::detect_zeroes::unmap;
    auto file = open_target_file(g, fo, d.target);
    if (!file)
        co_return file.error();
    if (!fmt) {
        auto probed = co_await block::probe_format(**file);
        if (!probed)
            co_return probed.error();
        fmt = *probed;
        if (*fmt != "raw" && *fmt != "qcow2")
            co_return qapi::generic("drive-backup target format '" + *fmt +
                                    "' is not supported (only raw and qcow2)");
    }
    block::node_options io = fo;
    io.name = g.auto_name();
    qapi::result<std::shared_ptr<block::node>> image = qapi::generic("no image");
    if (*fmt == "raw") {
        image = block::open_raw(io, *file, 0, std::nullopt);
    } else {
        image = co_await block::open_qcow2(io, *file, {});
        // Backed by the nodes the source already has open, not a second copy of them.
        if (image && backing)
            if (auto r = block::set_qcow2_backing(**image, backing); !r)
                image = r.error();
    }
    if (!image)
        co_return image.error();
    g.insert(*file);
    g.insert(*image);
    d.backup.target = (*image)->name();
    co_return *image;
}

} // namespace bjd::jobs::detail
