// SPDX-License-Identifier: MIT
#include "bjd/block/query.hpp"

#include "bjd/block/driver.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <vector>

namespace bjd::block {

namespace {

void write_compact(std::string& out, const boost::json::value& v)
{
    switch (v.kind()) {
    case boost::json::kind::object: {
        const auto& o = v.get_object();
        std::vector<std::string_view> keys;
        for (const auto& kv : o)
            keys.push_back(kv.key());
        std::sort(keys.begin(), keys.end());
        out += '{';
        for (std::size_t i = 0; i < keys.size(); ++i) {
            if (i)
                out += ", ";
            out += boost::json::serialize(boost::json::value(keys[i]));
            out += ": ";
            write_compact(out, o.at(keys[i]));
        }
        out += '}';
        break;
    }
    default:
        out += boost::json::serialize(v);
    }
}

} // namespace

boost::json::object options_json(const node& n)
{
    if (auto o = n.json_options())
        return *o;
    // A format names its file's options (QEMU's bdrv_refresh_filename); a protocol its file.
    if (const node* f = n.child("file"))
        return {{"driver", std::string(n.driver())}, {"file", options_json(*f)}};
    return {{"driver", std::string(n.driver())}, {"filename", n.filename()}};
}

std::string display_filename(const node& n)
{
    auto o = n.json_options();
    if (!o)
        return n.filename();
    std::string out = "json:";
    write_compact(out, *o);
    return out;
}

qapi::image_info describe_image(const node& n, bool with_backing_chain)
{
    qapi::image_info img;
    img.filename = display_filename(n);
    // QEMU reports dirty-flag when bdrv_get_info works: qcow2 answers itself, raw and
    // filters forward to their child, and null-co and nbd have none.
    const node* bottom = &n;
    while (bottom->primary_child() && bottom->driver() != "qcow2")
        bottom = bottom->primary_child();
    if (bottom->driver() != "null-co" && bottom->driver() != "null-aio" && bottom->driver() != "nbd")
        img.dirty_flag = false;
    img.format = std::string(n.driver());
    // QEMU sizes nodes in 512-byte sectors: a file of 196616 bytes shows 197120.
    img.virtual_size = static_cast<std::int64_t>((n.size() + 511) / 512 * 512);
    if (auto a = n.allocated_size(); a >= 0)
        img.actual_size = a;
    if (auto c = n.cluster_size())
        img.cluster_size = c;
    if (n.driver() == "rbd") {   // QEMU's qemu_rbd_get_specific_info: encryption-format only when encrypted
        qapi::image_info_specific spec;
        spec.type = qapi::image_info_specific_kind::rbd;
        spec.u.rbd = qapi::image_info_specific_rbd_wrapper{};
        img.format_specific = std::move(spec);
    }
    if (const auto* q = qcow2_info(n)) {
        qapi::image_info_specific_q_cow2 d;
        d.compat = q->version >= 3 ? "1.1" : "0.10";
        if (q->version >= 3) {
            d.lazy_refcounts = q->lazy_refcounts;
            d.corrupt = q->corrupt;
            d.extended_l2 = false;
        }
        d.refcount_bits = q->refcount_bits;
        d.compression_type = qapi::qcow2_compression_type::zlib;
        // Read from the bitmap directory as it is now, like QEMU's qcow2_get_specific_info.
        if (auto stored = qcow2_stored_bitmaps(n); !stored.empty()) {
            d.bitmaps.emplace();
            for (auto& b : stored) {
                qapi::qcow2_bitmap_info i;
                i.name = std::move(b.name);
                i.granularity = b.granularity;
                if (b.in_use)
                    i.flags.push_back(qapi::qcow2_bitmap_info_flags::in_use);
                if (b.auto_enable)
                    i.flags.push_back(qapi::qcow2_bitmap_info_flags::auto_);
                d.bitmaps->push_back(std::move(i));
            }
        }
        qapi::image_info_specific spec;
        spec.type = qapi::image_info_specific_kind::qcow2;
        spec.u.qcow2 = qapi::image_info_specific_q_cow2_wrapper{std::move(d)};
        img.format_specific = std::move(spec);
        if (!q->backing_file.empty()) {
            img.backing_filename = q->backing_file;   // the header's string, verbatim
            // Attached or not, QEMU names the file the header means and its format.
            const std::string& f = q->backing_file;
            const std::string own = n.filename();
            const auto slash = own.rfind('/');
            img.full_backing_filename = f[0] == '/' || slash == std::string::npos ? f : own.substr(0, slash + 1) + f;
            if (!q->backing_format.empty())
                img.backing_filename_format = q->backing_format;
        }
    }
    if (node* b = n.cow_backing()) {
        if (!img.backing_filename)
            img.backing_filename = b->filename();
        img.full_backing_filename = b->filename();
        const node* data = b;   // a job's filter above the backing image shows what it filters
        while (data->is_filter() && data->primary_child())
            data = data->primary_child();
        img.backing_filename_format = std::string(data->driver());
        if (with_backing_chain)
            img.backing_image = qapi::box<qapi::image_info>(describe_image(*b, true));
    }
    return img;
}

qapi::block_device_info describe_node(const node& n, bool flat)
{
    qapi::block_device_info info;
    info.file = display_filename(n);
    info.node_name = n.name();
    info.ro = n.read_only();
    info.drv = std::string(n.driver());
    int depth = 0;
    for (node* b = n.cow_backing(); b; b = b->cow_backing())
        ++depth;
    if (node* b = n.cow_backing())
        info.backing_file = b->filename();
    info.backing_file_depth = flat ? 0 : depth;   // QEMU 7.2 counts the chain only when not flat
    info.encrypted = false;
    switch (n.options().zeroes) {
    case node_options::detect_zeroes::off: info.detect_zeroes = qapi::blockdev_detect_zeroes_options::off; break;
    case node_options::detect_zeroes::on: info.detect_zeroes = qapi::blockdev_detect_zeroes_options::on; break;
    case node_options::detect_zeroes::unmap: info.detect_zeroes = qapi::blockdev_detect_zeroes_options::unmap; break;
    }
    info.bps = info.bps_rd = info.bps_wr = 0;
    info.iops = info.iops_rd = info.iops_wr = 0;
    info.image = describe_image(n, !flat);
    info.cache.writeback = true;
    info.cache.direct = n.options().cache_direct;
    info.cache.no_flush = n.options().cache_no_flush;
    info.write_threshold = static_cast<std::int64_t>(n.write_threshold());   // an int in QEMU too
    if (auto bitmaps = n.dirty_bitmaps(); !bitmaps.empty()) {
        info.dirty_bitmaps.emplace();
        for (auto& b : bitmaps) {
            qapi::block_dirty_info d;
            d.name = std::move(b.name);
            d.count = static_cast<std::int64_t>(b.count);
            d.granularity = b.granularity;
            d.recording = b.recording;
            d.busy = b.busy;
            d.persistent = b.persistent;
            if (b.inconsistent)
                d.inconsistent = true;   // QEMU shows the member only when true
            info.dirty_bitmaps->push_back(std::move(d));
        }
    }
    if (auto c = n.connection()) {
        qapi::blockdev_connection_info ci;
        if (!qapi::parse_enum(c->state, ci.state))
            ci.state = qapi::blockdev_connection_state::closed;
        ci.server = std::move(c->server);
        ci.connections = c->connections;
        ci.tls = c->tls;
        ci.reconnects = static_cast<std::int64_t>(c->reconnects);
        info.connection = std::move(ci);
    }
    return info;
}

} // namespace bjd::block
