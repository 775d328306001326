// SPDX-License-Identifier: MIT
/// \file
/// Job views, rate estimates and progress lines.
#include "bjd/client/progress.hpp"

#include "bjd/client/format.hpp"

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace bjd::client {

namespace json = boost::json;

namespace {

std::optional<std::int64_t> int_of(const json::object& o, std::string_view k)
{
    const json::value* v = o.if_contains(k);
    if (!v) {
        return std::nullopt;
    }
    if (v->is_int64()) {
        return v->get_int64();
    }
    if (v->is_uint64()) {
        return static_cast<std::int64_t>(v->get_uint64());
    }
    return std::nullopt;
}

std::optional<std::string> str_of(const json::object& o, std::string_view k)
{
    const json::value* v = o.if_contains(k);
    return v && v->is_string() ? std::optional<std::string>(std::string(v->get_string())) : std::nullopt;
}

bool bool_of(const json::object& o, std::string_view k)
{
    const json::value* v = o.if_contains(k);
    return v && v->is_bool() && v->get_bool();
}

} // namespace

std::vector<job_view> merge_jobs(const json::array* block_jobs, const json::array* jobs)
{
    std::map<std::string, job_view> by_id;
    if (jobs) {
        for (const auto& v : *jobs) {
            if (!v.is_object()) {
                continue;
            }
            const auto& o = v.get_object();
            job_view j;
            j.id = str_of(o, "id").value_or("");
            j.type = str_of(o, "type").value_or("");
            j.status = str_of(o, "status").value_or("");
            j.done = int_of(o, "current-progress").value_or(0);
            j.total = int_of(o, "total-progress").value_or(0);
            j.ready = j.status == "ready" || j.status == "standby";
            j.paused = j.status == "paused" || j.status == "standby";
            j.error = str_of(o, "error");
            by_id[j.id] = std::move(j);
        }
    }
    if (block_jobs) {
        for (const auto& v : *block_jobs) {
            if (!v.is_object()) {
                continue;
            }
            const auto& o = v.get_object();
            std::string id = str_of(o, "device").value_or("");
            job_view& j = by_id[id];
            j.id = id;
            j.type = str_of(o, "type").value_or(j.type);
            j.status = str_of(o, "status").value_or(j.status);
            j.done = int_of(o, "offset").value_or(j.done);
            j.total = int_of(o, "len").value_or(j.total);
            j.ready = bool_of(o, "ready");
            j.paused = bool_of(o, "paused");
            j.speed = int_of(o, "speed");
            j.rate = int_of(o, "rate");
            j.dirty_bytes = int_of(o, "dirty-bytes");
            if (const json::value* a = o.if_contains("actively-synced"); a && a->is_bool()) {
                j.actively_synced = a->get_bool();
            }
            j.copy_mode = str_of(o, "copy-mode");
            if (auto e = str_of(o, "error")) {
                j.error = e;
            }
        }
    }
    std::vector<job_view> out;
    for (auto& [id, j] : by_id) {
        out.push_back(std::move(j));
    }
    return out;
}

void rate_estimator::sample(const std::string& id, std::int64_t done, clock::time_point now)
{
    auto it = state_.find(id);
    if (it == state_.end()) {
        state_[id] = state{done, now, std::nullopt};
        return;
    }
    state& s = it->second;
    double dt = std::chrono::duration<double>(now - s.at).count();
    if (dt < 0.05) {
        return;   // too close to tell
    }
    double r = std::max(0.0, static_cast<double>(done - s.done) / dt);
    // Exponential smoothing over a few samples: steady enough to read, quick to follow.
    s.rate = s.rate ? 0.6 * r + 0.4 * *s.rate : r;
    s.done = done;
    s.at = now;
}

std::optional<double> rate_estimator::rate(const std::string& id) const
{
    auto it = state_.find(id);
    return it == state_.end() ? std::nullopt : it->second.rate;
}

std::optional<double> effective_rate(const job_view& j, std::optional<double> estimate)
{
    // The pace of `done` is what an ETA needs; the server's rate (bytes written to the
    // target) leaves out ranges skipped as zero or unallocated. It fills in until two
    // samples exist.
    if (estimate) {
        return estimate;
    }
    if (j.rate) {
        return static_cast<double>(*j.rate);
    }
    return std::nullopt;
}

std::optional<std::int64_t> eta_seconds(const job_view& j, std::optional<double> rate)
{
    if (j.status != "running" || j.total <= 0 || !rate || *rate < 1.0) {
        return std::nullopt;
    }
    std::int64_t left = std::max<std::int64_t>(0, j.total - j.done);
    if (j.dirty_bytes) {
        left = std::max(left, *j.dirty_bytes);
    }
    return static_cast<std::int64_t>(std::ceil(static_cast<double>(left) / *rate));
}

namespace {
std::string percent(const job_view& j)
{
    char buf[16];
    double p = j.total > 0 ? 100.0 * static_cast<double>(j.done) / static_cast<double>(j.total) : 0.0;
    std::snprintf(buf, sizeof buf, "%5.1f%%", std::min(100.0, p));
    return buf;
}

std::string mode_text(const job_view& j)
{
    std::string m = j.copy_mode.value_or("");
    if (j.actively_synced && *j.actively_synced) {
        m += m.empty() ? "actively-synced" : " (synced)";
    }
    return m;
}
} // namespace

std::string render_bar(const job_view& j, std::optional<double> rate, int width)
{
    constexpr int min_bar = 6;
    std::string head = j.id + " " + j.type + " " + j.status;
    std::string base = percent(j) + " " + format_bytes(j.done) + "/" + format_bytes(j.total);
    // Optional figures, the first ones kept longest when the line is short of room.
    std::vector<std::string> extra;
    if (rate) {
        extra.push_back(" " + format_bytes(static_cast<std::int64_t>(*rate)) + "/s");
    }
    if (auto eta = eta_seconds(j, rate)) {
        extra.push_back(" ETA " + format_duration(*eta));
    }
    if (j.dirty_bytes) {
        extra.push_back(" dirty " + format_bytes(*j.dirty_bytes));
    }
    if (auto m = mode_text(j); !m.empty()) {
        extra.push_back(" " + m);
    }
    std::string error = j.error ? " error: " + *j.error : std::string();
    auto figures = [&](std::size_t n) {
        std::string f = base;
        for (std::size_t i = 0; i < n; ++i) {
            f += extra[i];
        }
        return f + error;
    };
    auto room_for = [&](const std::string& f) {
        return width - static_cast<int>(head.size() + f.size()) - 4;   // " [" "] " around the bar
    };
    std::size_t keep = extra.size();
    while (keep > 0 && room_for(figures(keep)) < min_bar) {
        --keep;
    }
    std::string line;
    if (int room = room_for(figures(keep)); room >= min_bar) {
        int bar = std::min(room, 50);
        double frac = j.total > 0 ? static_cast<double>(j.done) / static_cast<double>(j.total) : 0.0;
        int fill = static_cast<int>(std::clamp(frac, 0.0, 1.0) * bar + 0.5);
        line = head + " [" + std::string(static_cast<std::size_t>(fill), '#') +
               std::string(static_cast<std::size_t>(bar - fill), '.') + "] " + figures(keep);
    } else {
        line = head + " " + figures(extra.size());   // too narrow for a bar: the figures, cut
    }
    if (width > 0 && static_cast<int>(line.size()) > width) {
        line.resize(static_cast<std::size_t>(width));
    }
    return line;
}

std::string change_key(const job_view& j)
{
    std::string s = "job=" + j.id + " type=" + j.type + " status=" + j.status + " offset=" + std::to_string(j.done) +
                    " len=" + std::to_string(j.total);
    if (j.dirty_bytes) {
        s += " dirty-bytes=" + std::to_string(*j.dirty_bytes);
    }
    if (j.speed) {
        s += " speed=" + std::to_string(*j.speed);
    }
    if (j.copy_mode) {
        s += " copy-mode=" + *j.copy_mode;
    }
    if (j.actively_synced) {
        s += std::string(" actively-synced=") + (*j.actively_synced ? "true" : "false");
    }
    if (j.error) {
        s += " error=" + json::serialize(json::string(*j.error));
    }
    return s;
}

std::string render_line(const job_view& j, std::optional<double> rate)
{
    std::string s = change_key(j);
    // rate and ETA go after the fixed fields, before the optional ones, for readability.
    std::string extra;
    if (rate) {
        extra += " rate=" + std::to_string(static_cast<std::int64_t>(*rate));
    }
    if (auto eta = eta_seconds(j, rate)) {
        extra += " eta=" + std::to_string(*eta);
    }
    auto pos = s.find(" len=");
    pos = s.find(' ', pos + 1);
    if (pos == std::string::npos) {
        s += extra;
    } else {
        s.insert(pos, extra);
    }
    return s;
}

} // namespace bjd::client
