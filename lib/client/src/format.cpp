// SPDX-License-Identifier: MIT
/// \file
/// Indented JSON, byte counts and durations.
#include "bjd/client/format.hpp"

#include <boost/json/serialize.hpp>

#include <cstdio>

namespace bjd::client {

namespace json = boost::json;

namespace {
void pretty(std::string& out, const json::value& v, int indent, int level)
{
    auto newline = [&](int lvl) {
        out += '\n';
        out.append(static_cast<std::size_t>(indent * lvl), ' ');
    };
    if (v.is_object()) {
        const auto& o = v.get_object();
        if (o.empty()) {
            out += "{}";
            return;
        }
        out += '{';
        bool first = true;
        for (const auto& kv : o) {
            out += first ? "" : ",";
            first = false;
            newline(level + 1);
            out += json::serialize(json::string(kv.key()));
            out += ": ";
            pretty(out, kv.value(), indent, level + 1);
        }
        newline(level);
        out += '}';
    } else if (v.is_array()) {
        const auto& a = v.get_array();
        if (a.empty()) {
            out += "[]";
            return;
        }
        out += '[';
        bool first = true;
        for (const auto& e : a) {
            out += first ? "" : ",";
            first = false;
            newline(level + 1);
            pretty(out, e, indent, level + 1);
        }
        newline(level);
        out += ']';
    } else {
        out += json::serialize(v);
    }
}
} // namespace

std::string pretty_json(const json::value& v, int indent)
{
    std::string out;
    pretty(out, v, indent, 0);
    return out;
}

std::string format_bytes(std::int64_t bytes)
{
    static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (bytes < 1024) {
        return std::to_string(bytes) + " B";
    }
    double v = static_cast<double>(bytes);
    int u = 0;
    while (v >= 1024.0 && u < 6) {
        v /= 1024.0;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, v >= 100 ? "%.0f %s" : v >= 10 ? "%.1f %s" : "%.2f %s", v, units[u]);
    return buf;
}

std::string format_duration(std::int64_t s)
{
    if (s < 0) {
        return "--";
    }
    char buf[32];
    if (s < 60) {
        std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
    } else if (s < 3600) {
        std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
    } else if (s < 86400) {
        std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                      static_cast<long long>(s % 3600 / 60));
    } else {
        std::snprintf(buf, sizeof buf, "%lldd%02lldh", static_cast<long long>(s / 86400),
                      static_cast<long long>(s % 86400 / 3600));
    }
    return buf;
}

} // namespace bjd::client
