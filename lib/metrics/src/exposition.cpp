// SPDX-License-Identifier: MIT
// The Prometheus text exposition of block statistics and job progress.
#include "bjd/metrics/metrics.hpp"

#include "bjd/block/backend.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/block/node.hpp"
#include "bjd/io/engine.hpp"
#include "bjd/io/huge_pages.hpp"
#include "bjd/io/poll_loop.hpp"
#include "bjd/jobs/job.hpp"
#include "bjd/stats/block_acct.hpp"

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace bjd::metrics {

namespace {

using stats::op;

/// One labelled source of block statistics (a node or a drive).
struct source {
    std::string labels;   // `node="r0"` or `drive="d0"`
    stats::snapshot snap;
    std::uint64_t wr_highest_offset;
};

/// Nanoseconds as exact decimal seconds.
std::string seconds(std::int64_t ns)
{
    char buf[40];
    const char* sign = ns < 0 ? "-" : "";
    std::uint64_t u = ns < 0 ? std::uint64_t(0) - std::uint64_t(ns) : std::uint64_t(ns);
    std::snprintf(buf, sizeof buf, "%s%llu.%09llu", sign, static_cast<unsigned long long>(u / 1'000'000'000),
                  static_cast<unsigned long long>(u % 1'000'000'000));
    return buf;
}

/// Nanoseconds as decimal seconds without trailing zeros ("0.00001", "1"): a bucket's `le`.
std::string seconds_short(std::uint64_t ns)
{
    std::string s = seconds(std::int64_t(ns));
    s.erase(s.find_last_not_of('0') + 1);
    if (s.back() == '.')
        s.pop_back();
    return s;
}

std::string number(double v)
{
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
}

class writer {
public:
    void family(const std::string& name, const char* type, const std::string& help)
    {
        out_ += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    }
    void sample(const std::string& name, const std::string& labels, const std::string& value)
    {
        out_ += labels.empty() ? name + " " + value + "\n" : name + "{" + labels + "} " + value + "\n";
    }
    std::string take() { return std::move(out_); }

private:
    std::string out_;
};

const char* const op_names[] = {"rd", "wr", "flush", "unmap"};
const char* const op_words[] = {"read", "write", "flush", "unmap"};

} // namespace

std::string escape_label(std::string_view s)
{
    std::string r;
    r.reserve(s.size());
    for (char c : s) {
        if (c == '\\')
            r += "\\\\";
        else if (c == '"')
            r += "\\\"";
        else if (c == '\n')
            r += "\\n";
        else
            r += c;
    }
    return r;
}

std::string render(const block::graph& g, const jobs::manager* jobs, const std::vector<loop_sample>& loops)
{
    std::vector<source> srcs;
    for (const auto& n : g.nodes())
        srcs.push_back({"node=\"" + escape_label(n->name()) + "\"", n->acct().read(), n->wr_highest_offset()});
    for (const auto& d : g.drives().all()) {
        const block::node* m = d->visible_medium();
        srcs.push_back({"drive=\"" + escape_label(d->name()) + "\"", d->acct().read(), m ? m->wr_highest_offset() : 0});
    }

    writer w;
    // Per-type counters: a family per (field, type), every source in it.
    struct counter {
        const char* pattern;   // %s = rd|wr|flush|unmap
        const char* help;      // %s = read|write|flush|unmap
        std::string (*value)(const stats::op_totals&);
        bool with_flush;
    };
    const counter counters[] = {
        {"bjd_%s_bytes_total", "Bytes of successful %s requests.",
         [](const stats::op_totals& t) { return std::to_string(t.bytes); }, false},
        {"bjd_%s_operations_total", "Successful %s requests.",
         [](const stats::op_totals& t) { return std::to_string(t.operations); }, true},
        {"bjd_failed_%s_operations_total", "%s requests completed with an error.",
         [](const stats::op_totals& t) { return std::to_string(t.failed); }, true},
        {"bjd_invalid_%s_operations_total", "%s requests rejected before submission.",
         [](const stats::op_totals& t) { return std::to_string(t.invalid); }, true},
        {"bjd_%s_time_seconds_total", "Summed latency of accounted %s requests.",
         [](const stats::op_totals& t) { return seconds(std::int64_t(t.total_time_ns)); }, true},
    };
    char name[64], help[96];
    for (const counter& c : counters) {
        for (unsigned o = 0; o < stats::op_count; ++o) {
            if (!c.with_flush && o == unsigned(op::flush))
                continue;
            std::snprintf(name, sizeof name, c.pattern, op_names[o]);
            std::snprintf(help, sizeof help, c.help, op_words[o]);
            w.family(name, "counter", help);
            for (const source& s : srcs)
                w.sample(name, s.labels, c.value(s.snap.ops[o]));
        }
    }
    // Every request is accounted on each node it passes: a write through a raw or qcow2 node
    // counts there and again on its file node. The role says which nodes to sum:
    // role="protocol" (no children: file, nbd, null-co) is what reached storage, once.
    w.family("bjd_node_info", "gauge", "Always 1: a node's driver and role (protocol, format or filter).");
    for (const auto& n : g.nodes()) {
        const char* role = n->children().empty() ? "protocol" : n->is_filter() ? "filter" : "format";
        w.sample("bjd_node_info",
                 "node=\"" + escape_label(n->name()) + "\",driver=\"" + escape_label(n->driver()) + "\",role=\"" + role + "\"",
                 "1");
    }
    w.family("bjd_wr_highest_offset_bytes", "gauge", "End of the furthest write.");
    for (const source& s : srcs)
        w.sample("bjd_wr_highest_offset_bytes", s.labels, std::to_string(s.wr_highest_offset));
    w.family("bjd_idle_time_seconds", "gauge", "Time since the last accounted completion.");
    for (const source& s : srcs)
        if (s.snap.idle_time_ns)
            w.sample("bjd_idle_time_seconds", s.labels, seconds(*s.snap.idle_time_ns));
    w.family("bjd_stats_start_time_seconds", "gauge", "Unix time when these counters started.");
    for (const source& s : srcs)
        w.sample("bjd_stats_start_time_seconds", s.labels, seconds(s.snap.start_time_ns));

    // Timed statistics: one series per configured interval.
    using lat = stats::latency_summary;
    using tt = stats::timed_totals;
    const char* const kinds[] = {"min", "avg", "max"};
    std::uint64_t lat::*const fields[] = {&lat::min_ns, &lat::avg_ns, &lat::max_ns};
    lat tt::*const lats[] = {&tt::rd, &tt::wr, &tt::flush};
    for (unsigned o = 0; o < stats::latency_op_count; ++o) {
        for (unsigned k = 0; k < 3; ++k) {
            std::snprintf(name, sizeof name, "bjd_timed_%s_latency_%s_seconds", op_names[o], kinds[k]);
            std::snprintf(help, sizeof help, "%s %s latency in the current window.", kinds[k], op_words[o]);
            w.family(name, "gauge", help);
            for (const source& s : srcs)
                for (const tt& t : s.snap.timed)
                    w.sample(name, s.labels + ",interval=\"" + std::to_string(t.interval_length) + "\"",
                             seconds(std::int64_t((t.*lats[o]).*fields[k])));
        }
    }
    double tt::*const depths[] = {&tt::avg_rd_queue_depth, &tt::avg_wr_queue_depth};
    for (unsigned o = 0; o < 2; ++o) {
        std::snprintf(name, sizeof name, "bjd_timed_%s_queue_depth", op_names[o]);
        std::snprintf(help, sizeof help, "Average %s queue depth in the current window.", op_words[o]);
        w.family(name, "gauge", help);
        for (const source& s : srcs)
            for (const tt& t : s.snap.timed)
                w.sample(name, s.labels + ",interval=\"" + std::to_string(t.interval_length) + "\"",
                         number(t.*depths[o]));
    }

    // Latency histograms (block-latency-histogram-set) as Prometheus histograms. QEMU's bin i
    // counts [b(i-1), b(i)): bucket le=b(i) is the sum of the bins below b(i), i.e. latencies
    // strictly under b(i) ns (at nanosecond resolution, <= b(i) - 1 ns). Setting a histogram
    // again starts it afresh: its start time changes. Not NAME_created: OpenMetrics reserves
    // that suffix for the creation time of the histogram's own series.
    for (unsigned o = 0; o < stats::latency_op_count; ++o) {
        std::string fam = std::string("bjd_") + op_names[o] + "_latency_seconds";
        w.family(fam, "histogram",
                 std::string("Latency of completed ") + op_words[o] +
                     " requests, failed ones included (block-latency-histogram-set).");
        for (const source& s : srcs) {
            const auto& h = s.snap.histograms[o];
            if (!h)
                continue;
            std::uint64_t cum = 0;
            for (std::size_t i = 0; i < h->boundaries.size(); ++i) {
                cum += h->bins[i];
                w.sample(fam + "_bucket", s.labels + ",le=\"" + seconds_short(h->boundaries[i]) + "\"",
                         std::to_string(cum));
            }
            cum += h->bins.back();
            w.sample(fam + "_bucket", s.labels + ",le=\"+Inf\"", std::to_string(cum));
            w.sample(fam + "_sum", s.labels, seconds(std::int64_t(h->sum_ns)));
            w.sample(fam + "_count", s.labels, std::to_string(cum));
        }
    }
    for (unsigned o = 0; o < stats::latency_op_count; ++o) {
        std::string fam = std::string("bjd_") + op_names[o] + "_latency_histogram_start_time_seconds";
        w.family(fam, "gauge", std::string("Unix time when the ") + op_words[o] + " latency histogram was set.");
        for (const source& s : srcs)
            if (const auto& h = s.snap.histograms[o])
                w.sample(fam, s.labels, seconds(h->start_time_ns));
    }

    // Jobs. The progress gauges carry what stays the same for a job's life (id, type); its
    // state is a gauge of its own, one series per state, 1 for the current one and 0 for the
    // others (as node_exporter's node_systemd_unit_state), so a state change moves a value
    // instead of starting new progress series:
    //   bjd_job_current_progress_bytes * on(id) group_left(state) (bjd_job_state == 1)
    std::vector<std::shared_ptr<jobs::job>> js;
    if (jobs)
        js = jobs->list();
    auto job_labels = [](const jobs::job& j) {
        return "id=\"" + escape_label(j.id()) + "\",type=\"" + std::string(to_string(j.type())) + "\"";
    };
    auto job_family = [&](const char* fam, const char* h, std::uint64_t (jobs::job::*get)() const noexcept) {
        w.family(fam, "gauge", h);
        for (const auto& j : js)
            w.sample(fam, job_labels(*j), std::to_string((*j.*get)()));
    };
    job_family("bjd_job_current_progress_bytes", "Job progress so far.", &jobs::job::progress_current);
    job_family("bjd_job_total_progress_bytes", "Job progress expected in total (an estimate).", &jobs::job::progress_total);
    w.family("bjd_job_state", "gauge", "1 for the job's current state (query-jobs' status), 0 for the others.");
    for (const auto& j : js)
        // Every JobStatus but 'undefined', which no job is ever in.
        for (int st = int(jobs::job_status::created); st <= int(jobs::job_status::null); ++st)
            w.sample("bjd_job_state",
                     job_labels(*j) + ",state=\"" + std::string(to_string(jobs::job_status(st))) + "\"",
                     j->status() == jobs::job_status(st) ? "1" : "0");

    // The engine that serves aio=io_uring (and aio=native) nodes: how many of its reads and
    // writes went into a buffer registered with it, which spares the kernel pinning the
    // buffer's pages for each request (the copy jobs' buffers are registered, and the NBD main
    // loop's large payload buffers).
    const io::engine& e = g.engine();
    const io::engine_stats es = e.stats();
    const std::string engine_label = std::string("engine=\"") + io::to_string(e.kind()) + "\"";
    w.family("bjd_io_requests_total", "counter", "Reads and writes the I/O engine carried out.");
    w.sample("bjd_io_requests_total", engine_label + ",op=\"read\"", std::to_string(es.reads));
    w.sample("bjd_io_requests_total", engine_label + ",op=\"write\"", std::to_string(es.writes));
    w.family("bjd_io_registered_buffer_submissions_total", "counter",
             "Reads and writes submitted into a buffer registered with io_uring (a fixed buffer, whose pages "
             "stay pinned), resubmissions included.");
    w.sample("bjd_io_registered_buffer_submissions_total", engine_label, std::to_string(es.fixed));

    // Large I/O buffers (docs/io-buffers.md): what their memory is while copies and exports
    // run, so that an operator can tell it from the rest of the daemon's RSS.
    const io::huge_pages::usage hp = io::huge_pages::current();
    w.family("bjd_io_buffer_memory_bytes", "gauge",
             "Memory mapped for I/O buffers of 256 KiB and more, in 2 MiB regions marked for transparent huge "
             "pages (AnonHugePages in /proc/PID/smaps_rollup says how much of it the kernel gave as huge pages).");
    w.sample("bjd_io_buffer_memory_bytes", "", std::to_string(hp.mapped_bytes));
    w.family("bjd_io_buffer_held_bytes", "gauge",
             "Of bjd_io_buffer_memory_bytes, what live buffers hold (each rounded up to a power of two, or to "
             "whole 2 MiB pages above 2 MiB).");
    w.sample("bjd_io_buffer_held_bytes", "", std::to_string(hp.held_bytes));

    if (!loops.empty()) {
        auto label = [](const loop_sample& l) { return "loop=\"" + escape_label(l.id) + "\""; };
        w.family("bjd_loop_wakeups_total", "counter",
                 "Events an event loop found while polling (how=polled) or that woke it (how=slept).");
        for (const auto& l : loops) {
            w.sample("bjd_loop_wakeups_total", label(l) + ",how=\"polled\"", std::to_string(l.stats.polled));
            w.sample("bjd_loop_wakeups_total", label(l) + ",how=\"slept\"", std::to_string(l.stats.slept));
        }
        w.family("bjd_loop_poll_window_seconds", "gauge",
                 "How long an event loop polls before it sleeps, as it has adapted (0: not polling).");
        for (const auto& l : loops)
            w.sample("bjd_loop_poll_window_seconds", label(l), seconds(l.stats.window_ns));
        w.family("bjd_loop_poll_resting", "gauge",
                 "1 while an event loop sleeps at once because polling was measured not to pay on this "
                 "host (docs/polling.md), until it measures again.");
        for (const auto& l : loops)
            w.sample("bjd_loop_poll_resting", label(l), l.stats.resting ? "1" : "0");
    }

    w.family("bjd_build_info", "gauge", "Always 1: the version of this blockjobd and the QEMU it follows.");
    w.sample("bjd_build_info", "version=\"" + escape_label(BJD_VERSION) + "\",qemu_version=\"7.2\"", "1");
    return w.take();
}

} // namespace bjd::metrics
