// SPDX-License-Identifier: MIT
/// \file
/// `blockjobctl SOCKET watch [JOB]`: polls query-block-jobs and query-jobs (at once when a
/// job event arrives, else every --interval) and draws one progress bar per job on a
/// terminal, or prints a key=value line whenever a job changes.
#include "cli.hpp"

#include "bjd/client/progress.hpp"
#include "bjd/event_flag.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/serialize.hpp>

#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <set>

namespace bjd::ctl {

namespace asio = boost::asio;
namespace json = boost::json;

namespace {

int terminal_width()
{
    winsize ws{};
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) {
        return ws.ws_col;
    }
    return 80;
}

/// How a job ended, from its events (the job may be gone before the next poll).
struct outcome {
    std::string result;   ///< "completed", "cancelled", "failed"
    std::string error;
};

const json::array* return_array(const json::object& reply)
{
    const json::value* r = reply.if_contains("return");
    return r && r->is_array() ? &r->get_array() : nullptr;
}

} // namespace

asio::awaitable<int> run_watch(client::connection& conn, watch_options opts)
{
    auto ex = co_await asio::this_coro::executor;
    const bool tty = isatty(STDOUT_FILENO) == 1;
    event_flag poke(ex);
    bool stop = false;
    bool closed = false;
    std::map<std::string, outcome> ended;

    conn.on_event([&](const json::object& ev) {
        const json::value* name = ev.if_contains("event");
        const json::value* data = ev.if_contains("data");
        if (!name || !name->is_string() || !data || !data->is_object()) {
            return;
        }
        const auto& d = data->get_object();
        std::string n(name->get_string());
        auto id_of = [&](std::string_view key) {
            const json::value* v = d.if_contains(key);
            return v && v->is_string() ? std::string(v->get_string()) : std::string();
        };
        if (n == "BLOCK_JOB_COMPLETED") {
            outcome o{"completed", {}};
            if (const json::value* e = d.if_contains("error"); e && e->is_string()) {
                o = {"failed", std::string(e->get_string())};
            }
            ended[id_of("device")] = o;
        } else if (n == "BLOCK_JOB_CANCELLED") {
            ended[id_of("device")] = {"cancelled", {}};
        } else if (n == "BLOCK_JOB_ERROR") {
            // The job carries on or pauses per its error policy; the next poll shows it.
        }
        if (n.starts_with("BLOCK_JOB_") || n == "JOB_STATUS_CHANGE") {
            poke.notify_all();
        }
    });
    conn.on_closed([&](const std::string&) {
        closed = true;
        poke.notify_all();
    });

    asio::signal_set signals(ex, SIGINT, SIGTERM);
    int got_signal = 0;
    signals.async_wait([&](boost::system::error_code ec, int sig) {
        if (!ec) {
            got_signal = sig;
            stop = true;
            poke.notify_all();
        }
    });

    client::rate_estimator rates;
    std::map<std::string, std::string> last_key;   // non-tty: last printed line per job
    std::set<std::string> seen;
    std::map<std::string, client::job_view> last_view;
    int drawn = 0;   // bar lines on screen below the cursor's top
    int rc = exit_ok;
    bool first = true;
    if (tty) {
        std::cout << "\033[?25l" << std::flush;   // hide the cursor while drawing
    }
    auto finish_line = [&](const std::string& id) {
        // The job is gone: say how it ended.
        auto it = ended.find(id);
        std::string result = it != ended.end() ? it->second.result : "gone";
        std::string error = it != ended.end() ? it->second.error : std::string();
        if (const auto v = last_view.find(id); v != last_view.end() && v->second.error && error.empty()) {
            error = *v->second.error;
            if (result == "gone" || result == "completed") {
                result = "failed";
            }
        }
        if (result == "failed" || result == "cancelled") {
            rc = exit_qmp_error;
        }
        std::string line = tty ? id + ": " + result + (error.empty() ? "" : ": " + error)
                               : "job=" + id + " status=" + result +
                                     (error.empty() ? "" : " error=" + json::serialize(json::string(error)));
        return line;
    };

    for (;;) {
        if (stop || closed) {
            break;
        }
        json::object bj, jj;
        try {
            bj = co_await conn.execute("query-block-jobs");
            jj = co_await conn.execute("query-jobs");
        } catch (const client::client_error&) {
            closed = true;
            break;
        }
        const json::array* bja = return_array(bj);
        const json::array* jja = return_array(jj);
        if (!bja && !jja) {
            std::cerr << "blockjobctl: query-block-jobs: " << client::error_text(bj) << "\n";
            rc = exit_qmp_error;
            break;
        }
        auto now = client::rate_estimator::clock::now();
        std::vector<client::job_view> views;
        for (auto& v : client::merge_jobs(bja, jja)) {
            if (!opts.job || v.id == *opts.job) {
                views.push_back(std::move(v));
            }
        }
        // Jobs that were seen and are now gone, or concluded: print how they ended.
        std::vector<std::string> permanent;
        std::set<std::string> present;
        for (const auto& v : views) {
            present.insert(v.id);
        }
        for (auto it = seen.begin(); it != seen.end();) {
            if (!present.contains(*it)) {
                permanent.push_back(finish_line(*it));
                rates.forget(*it);
                last_view.erase(*it);
                it = seen.erase(it);
            } else {
                ++it;
            }
        }
        if (first && views.empty()) {
            if (opts.job) {
                std::cerr << "blockjobctl: no job '" << *opts.job << "'\n";
                rc = exit_qmp_error;
            } else {
                std::cerr << "blockjobctl: no jobs\n";
            }
            break;
        }
        first = false;
        bool all_done = true;    // every watched job concluded
        bool all_ready = !views.empty();
        for (const auto& v : views) {
            seen.insert(v.id);
            rates.sample(v.id, v.done, now);
            last_view[v.id] = v;
            if (v.status != "concluded" && v.status != "null") {
                all_done = false;
            }
            if (!v.ready) {
                all_ready = false;
            }
        }
        if (tty) {
            std::string out;
            if (drawn > 0) {
                out += "\033[" + std::to_string(drawn) + "A";
            }
            out += "\r\033[J";
            for (const auto& p : permanent) {
                out += p + "\n";
            }
            int width = terminal_width() - 1;
            for (const auto& v : views) {
                out += client::render_bar(v, client::effective_rate(v, rates.rate(v.id)), width) + "\n";
            }
            drawn = static_cast<int>(views.size());
            std::cout << out << std::flush;
        } else {
            for (const auto& p : permanent) {
                std::cout << p << "\n";
            }
            for (const auto& v : views) {
                std::string key = client::change_key(v);
                if (last_key[v.id] != key) {
                    last_key[v.id] = key;
                    std::cout << client::render_line(v, client::effective_rate(v, rates.rate(v.id))) << "\n";
                }
            }
            std::cout << std::flush;
        }
        if (views.empty() || all_done || (opts.until_ready && all_ready)) {
            if (all_done) {
                for (const auto& v : views) {
                    if (v.error) {
                        rc = exit_qmp_error;
                    }
                }
            }
            break;
        }
        asio::steady_timer timer(ex, std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                         std::chrono::duration<double>(opts.interval)));
        using namespace asio::experimental::awaitable_operators;
        co_await (timer.async_wait(bjd::nothrow_awaitable) || poke.wait());
    }
    if (tty) {
        std::cout << "\033[?25h" << std::flush;
    }
    signals.cancel();
    conn.on_event(nullptr);
    conn.on_closed(nullptr);
    if (got_signal) {
        co_return 128 + got_signal;
    }
    if (closed) {
        std::cerr << "blockjobctl: the connection closed\n";
        co_return exit_usage;
    }
    co_return rc;
}

} // namespace bjd::ctl
