// SPDX-License-Identifier: MIT
// Block statistics commands: query-blockstats, block-latency-histogram-set and
// x-blockdev-set-stats. Glue between the generated types and each node's stats::block_acct.
#include "bjd/block/graph.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"
#include "bjd/stats/block_acct.hpp"

#include <cstdint>
#include <limits>
#include <string>

namespace bjd::qapi {

namespace {

std::int64_t i64(std::uint64_t v) noexcept
{
    return v > std::uint64_t(std::numeric_limits<std::int64_t>::max()) ? std::numeric_limits<std::int64_t>::max()
                                                                       : std::int64_t(v);
}

block_latency_histogram_info encode_histogram(const stats::histogram_totals& h)
{
    return block_latency_histogram_info{h.boundaries, h.bins};
}

block_device_stats encode_stats(const stats::snapshot& s)
{
    using stats::op;
    block_device_stats d;
    d.rd_bytes = i64(s[op::read].bytes);
    d.wr_bytes = i64(s[op::write].bytes);
    d.unmap_bytes = i64(s[op::unmap].bytes);
    d.rd_operations = i64(s[op::read].operations);
    d.wr_operations = i64(s[op::write].operations);
    d.flush_operations = i64(s[op::flush].operations);
    d.unmap_operations = i64(s[op::unmap].operations);
    d.rd_total_time_ns = i64(s[op::read].total_time_ns);
    d.wr_total_time_ns = i64(s[op::write].total_time_ns);
    d.flush_total_time_ns = i64(s[op::flush].total_time_ns);
    d.unmap_total_time_ns = i64(s[op::unmap].total_time_ns);
    d.wr_highest_offset = i64(s.wr_highest_offset);
    d.rd_merged = i64(s[op::read].merged);
    d.wr_merged = i64(s[op::write].merged);
    d.unmap_merged = i64(s[op::unmap].merged);
    d.idle_time_ns = s.idle_time_ns;
    d.failed_rd_operations = i64(s[op::read].failed);
    d.failed_wr_operations = i64(s[op::write].failed);
    d.failed_flush_operations = i64(s[op::flush].failed);
    d.failed_unmap_operations = i64(s[op::unmap].failed);
    d.invalid_rd_operations = i64(s[op::read].invalid);
    d.invalid_wr_operations = i64(s[op::write].invalid);
    d.invalid_flush_operations = i64(s[op::flush].invalid);
    d.invalid_unmap_operations = i64(s[op::unmap].invalid);
    d.account_invalid = s.account_invalid;
    d.account_failed = s.account_failed;
    d.start_time_ns = s.start_time_ns;   // blockjobd's: exporters detect resets
    for (const auto& t : s.timed) {
        block_device_timed_stats ts;
        ts.interval_length = t.interval_length;
        ts.min_rd_latency_ns = i64(t.rd.min_ns);
        ts.max_rd_latency_ns = i64(t.rd.max_ns);
        ts.avg_rd_latency_ns = i64(t.rd.avg_ns);
        ts.min_wr_latency_ns = i64(t.wr.min_ns);
        ts.max_wr_latency_ns = i64(t.wr.max_ns);
        ts.avg_wr_latency_ns = i64(t.wr.avg_ns);
        ts.min_flush_latency_ns = i64(t.flush.min_ns);
        ts.max_flush_latency_ns = i64(t.flush.max_ns);
        ts.avg_flush_latency_ns = i64(t.flush.avg_ns);
        ts.avg_rd_queue_depth = t.avg_rd_queue_depth;
        ts.avg_wr_queue_depth = t.avg_wr_queue_depth;
        d.timed_stats.push_back(ts);
    }
    if (s.histograms[0])
        d.rd_latency_histogram = encode_histogram(*s.histograms[0]);
    if (s.histograms[1])
        d.wr_latency_histogram = encode_histogram(*s.histograms[1]);
    if (s.histograms[2])
        d.flush_latency_histogram = encode_histogram(*s.histograms[2]);
    return d;
}

/// One node-view entry, with `parent` = the primary child's entry, recursively.
block_stats node_stats(const block::node& n)
{
    block_stats out;
    out.node_name = n.name();
    const stats::snapshot s = n.acct().read();
    out.stats = encode_stats(s);
    if (n.driver() == "file") {
        // QEMU counts discards that reached the host; a node with discard=ignore passes none.
        block_stats_specific ds;
        ds.driver = blockdev_driver::file;
        block_stats_specific_file f;
        if (n.options().discard_unmap) {
            f.discard_nb_ok = s[stats::op::unmap].operations;
            f.discard_nb_failed = s[stats::op::unmap].failed;
            f.discard_bytes_ok = s[stats::op::unmap].bytes;
        }
        ds.u.file = f;
        out.driver_specific = ds;
    }
    if (const block::node* c = n.primary_child())
        out.parent = node_stats(*c);
    return out;
}

} // namespace

boost::asio::awaitable<result<std::vector<block_stats>>> qmp_query_blockstats(qmp::context& ctx,
                                                                               query_blockstats_args args)
{
    std::vector<block_stats> out;
    if (!args.query_nodes.value_or(false)) {
        // Device view: one entry per named drive (bjd/block/backend.hpp), like QEMU's
        // BlockBackends: the counters are the drive's, wr_highest_offset and the structure
        // (parent, backing) its medium's. Exports of nodes use no drive and are not listed.
        for (const auto& d : ctx.graph->drives().all()) {
            block_stats e;
            const block::node* m = d->visible_medium();
            if (m) {
                e = node_stats(*m);
                if (const block::node* b = m->backing())
                    e.backing = node_stats(*b);
            }
            e.device = d->name();
            e.stats = encode_stats(d->acct().read());
            e.stats.wr_highest_offset = m ? i64(m->wr_highest_offset()) : 0;
            out.push_back(std::move(e));
        }
        co_return out;
    }
    for (const auto& n : ctx.graph->nodes())
        out.push_back(node_stats(*n));
    co_return out;
}

boost::asio::awaitable<result<void>> qmp_block_latency_histogram_set(qmp::context& ctx,
                                                                     block_latency_histogram_set_args args)
{
    // `id` names a node: blockjobd has no guest devices (QEMU resolves a device id/QOM path).
    auto drive = ctx.graph->drives().find(args.id);   // a drive first, as QEMU's device ids
    auto n = drive ? drive->front() : ctx.graph->find(args.id);
    if (!n)
        co_return error{error_class::device_not_found, "Device '" + args.id + "' not found", {}};
    stats::block_acct& acct = n->acct();
    if (!args.boundaries && !args.boundaries_read && !args.boundaries_write && !args.boundaries_flush) {
        acct.clear_histograms();
        co_return result<void>{};
    }
    // Type by type, as QEMU: a failure leaves the earlier types changed.
    struct which {
        const std::optional<std::vector<std::uint64_t>>& specific;
        stats::op type;
        const char* name;
    };
    for (const which& w : {which{args.boundaries_read, stats::op::read, "read"},
                           which{args.boundaries_write, stats::op::write, "write"},
                           which{args.boundaries_flush, stats::op::flush, "flush"}}) {
        const auto& list = w.specific ? w.specific : args.boundaries;
        if (!list)
            continue;
        if (!acct.set_histogram(w.type, *list))
            co_return generic("Device '" + args.id + "' set " + w.name + " boundaries fail");
    }
    co_return result<void>{};
}

boost::asio::awaitable<result<void>> qmp_x_blockdev_set_stats(qmp::context& ctx, x_blockdev_set_stats_args args)
{
    // A drive's name configures the drive's own accounting (the device view).
    auto drive = ctx.graph->drives().find(args.node_name);
    auto n = drive ? result<std::shared_ptr<block::node>>(drive->front()) : ctx.graph->lookup(args.node_name);
    if (!n)
        co_return n.error();
    std::vector<std::uint32_t> intervals;
    if (args.intervals) {
        for (std::int64_t v : *args.intervals) {
            if (v <= 0 || v > std::int64_t(std::numeric_limits<std::uint32_t>::max()))
                co_return generic("Invalid interval length: " + std::to_string(v));
            intervals.push_back(std::uint32_t(v));
        }
    }
    stats::block_acct& acct = (*n)->acct();
    if (args.intervals)
        acct.set_intervals(intervals);
    if (args.account_invalid)
        acct.set_account_invalid(*args.account_invalid);
    if (args.account_failed)
        acct.set_account_failed(*args.account_failed);
    co_return result<void>{};
}

} // namespace bjd::qapi
