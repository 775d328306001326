// SPDX-License-Identifier: MIT
// qemu-storage-daemon's --nbd-server and --export (type=nbd) command-line syntax: QEMU keyval
// ("key=value,key=value", ",," for a literal comma, dotted keys for nested members).
#include "bjd/export/manager.hpp"

#include <map>
#include <optional>
#include <vector>
#include <stdexcept>

namespace bjd::exports {

namespace {

using keyval = std::map<std::string, std::string, std::less<>>;

keyval parse_keyval(std::string_view text)
{
    keyval out;
    std::size_t i = 0;
    while (i < text.size()) {
        std::size_t eq = text.find_first_of("=,", i);
        if (eq == std::string_view::npos || text[eq] != '=')
            throw std::invalid_argument("Expected '=' after parameter '" +
                                        std::string(text.substr(i, eq == std::string_view::npos ? eq : eq - i)) + "'");
        std::string key(text.substr(i, eq - i));
        if (key.empty())
            throw std::invalid_argument("Invalid parameter ''");
        std::string value;
        std::size_t j = eq + 1;
        for (; j < text.size(); ++j) {
            if (text[j] == ',') {
                if (j + 1 < text.size() && text[j + 1] == ',') {
                    value.push_back(',');
                    ++j;
                    continue;
                }
                break;
            }
            value.push_back(text[j]);
        }
        if (out.count(key))
            throw std::invalid_argument("Parameter '" + key + "' is set multiple times");   // QEMU keeps the last; we refuse
        out.emplace(std::move(key), std::move(value));
        i = j + 1;
    }
    return out;
}

std::string take(keyval& kv, std::string_view key, bool required)
{
    auto it = kv.find(key);
    if (it == kv.end()) {
        if (required)
            throw std::invalid_argument("Parameter '" + std::string(key) + "' is missing");
        return {};
    }
    std::string v = std::move(it->second);
    kv.erase(it);
    return v;
}

std::optional<std::string> take_opt(keyval& kv, std::string_view key)
{
    if (!kv.count(key))
        return std::nullopt;
    return take(kv, key, true);
}

bool take_bool(keyval& kv, std::string_view key, bool dflt)
{
    auto v = take_opt(kv, key);
    if (!v)
        return dflt;
    if (*v == "on" || *v == "yes" || *v == "true")
        return true;
    if (*v == "off" || *v == "no" || *v == "false")
        return false;
    throw std::invalid_argument("Parameter '" + std::string(key) + "' expects 'on' or 'off'");
}

/// blockjobd's statistics keys (same names and checks as --drive / x-drive-add).
void take_stats(keyval& kv, export_stats_options& st)
{
    constexpr std::string_view prefix = "stats-intervals.";
    std::map<unsigned long, std::string> items;   // index -> value
    for (auto it = kv.lower_bound(prefix); it != kv.end() && it->first.starts_with(prefix);) {
        std::string_view idx = std::string_view(it->first).substr(prefix.size());
        if (idx.empty() || idx.size() > 9 || idx.find_first_not_of("0123456789") != std::string_view::npos ||
            (idx.size() > 1 && idx[0] == '0'))
            throw std::invalid_argument("Parameter '" + it->first + "' is unexpected");
        items.emplace(std::stoul(std::string(idx)), std::move(it->second));
        it = kv.erase(it);
    }
    if (!items.empty()) {
        std::vector<std::uint32_t> v;
        for (auto& [i, text] : items) {
            if (i != v.size())
                throw std::invalid_argument("Parameter 'stats-intervals." + std::to_string(v.size()) + "' missing");
            std::size_t pos = 0;
            long long n = 0;
            try {
                n = std::stoll(text, &pos, 10);
            } catch (const std::logic_error&) {
                pos = 0;
            }
            if (text.empty() || pos != text.size())
                throw std::invalid_argument("Parameter 'stats-intervals." + std::to_string(i) + "' expects an integer");
            if (n <= 0 || n > 0xffffffffLL)
                throw std::invalid_argument("Invalid interval length: " + std::to_string(n));
            v.push_back(std::uint32_t(n));
        }
        st.intervals = std::move(v);
    }
    if (kv.count("stats-account-invalid"))
        st.account_invalid = take_bool(kv, "stats-account-invalid", true);
    if (kv.count("stats-account-failed"))
        st.account_failed = take_bool(kv, "stats-account-failed", true);
}

void reject_rest(const keyval& kv)
{
    if (!kv.empty())
        throw std::invalid_argument("Parameter '" + kv.begin()->first + "' is unexpected");
}

} // namespace

nbd_server_options parse_nbd_server_option(std::string_view text)
{
    keyval kv = parse_keyval(text);
    nbd_server_options o;
    std::string type = take(kv, "addr.type", true);
    if (type == "unix") {
        o.addr.type = listen_address::kind::unix_socket;
        o.addr.path = take(kv, "addr.path", true);
    } else if (type == "inet") {
        o.addr.type = listen_address::kind::inet;
        o.addr.host = take(kv, "addr.host", true);
        o.addr.port = take(kv, "addr.port", true);
    } else if (type == "fd") {
        // A socket passed by systemd: a FileDescriptorName= or a number (QEMU: a number).
        o.addr.type = listen_address::kind::fd;
        try {
            o.addr.fd = net::inherited_fd(take(kv, "addr.str", true));
        } catch (const std::system_error& e) {
            throw std::invalid_argument(e.what());
        }
    } else {
        throw std::invalid_argument("Parameter 'addr.type' does not accept value '" + type +
                                    "' (blockjobd supports 'unix', 'inet' and 'fd')");
    }
    o.tls_creds = take_opt(kv, "tls-creds");
    o.tls_authz = take_opt(kv, "tls-authz");
    if (auto mc = take_opt(kv, "max-connections")) {
        try {
            std::size_t pos = 0;
            unsigned long v = std::stoul(*mc, &pos);
            if (pos != mc->size() || v > 0xffffffffu)
                throw std::out_of_range("max-connections");
            o.max_connections = std::uint32_t(v);
        } catch (const std::logic_error&) {
            throw std::invalid_argument("Parameter 'max-connections' expects uint32");
        }
    }
    reject_rest(kv);
    return o;
}

export_options parse_export_option(std::string_view text, export_stats_options* stats)
{
    // qsd's --export has an implied first key: "--export nbd,id=…" means type=nbd.
    std::string with_type;
    std::size_t first_end = text.find(',');
    std::string_view first = text.substr(0, first_end);
    if (!first.empty() && first.find('=') == std::string_view::npos) {
        with_type = "type=" + std::string(text);
        text = with_type;
    }
    keyval kv = parse_keyval(text);
    std::string type = take(kv, "type", true);
    if (type != "nbd")
        throw std::invalid_argument("Parameter 'type' does not accept value '" + type +
                                    "' (blockjobd exports only 'nbd')");
    export_options o;
    o.id = take(kv, "id", true);
    o.node_name = take(kv, "node-name", true);
    o.name = take(kv, "name", false);
    o.description = take_opt(kv, "description");
    o.writable = take_bool(kv, "writable", false);
    o.writethrough = take_bool(kv, "writethrough", false);
    // Accepted for compatibility and ignored: blockjobd runs exports on the main loop.
    take_opt(kv, "iothread");
    take_bool(kv, "fixed-iothread", false);
    if (stats)
        take_stats(kv, *stats);
    reject_rest(kv);
    return o;
}

} // namespace bjd::exports
