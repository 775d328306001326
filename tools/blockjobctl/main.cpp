// SPDX-License-Identifier: MIT
/// \file
/// blockjobctl: command line parsing and the one-shot mode; the shell and `watch` live in
/// shell.cpp and watch.cpp, the protocol in lib/client.
#include "cli.hpp"

#include "bjd/client/format.hpp"
#include "bjd/client/shorthand.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json/serialize.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string_view>
#include <vector>

namespace asio = boost::asio;
namespace json = boost::json;
using namespace bjd;

namespace {

constexpr const char* default_socket = "/run/blockjobd/qmp.sock";

const char* usage_text = R"(Usage: blockjobctl [OPTIONS] [SOCKET]
       blockjobctl [OPTIONS] SOCKET COMMAND [KEY=VALUE...]
       blockjobctl [OPTIONS] SOCKET watch [--interval SECONDS] [--until-ready] [JOB]

A QMP client for blockjobd (and qemu-storage-daemon, QEMU).

  (no COMMAND)   interactive shell: history, Tab completes commands and argument
                 names from query-qmp-schema, events are shown as they arrive
  COMMAND        run one command, print its return value as JSON, exit
  watch [JOB]    progress of JOB (or of every job) until it ends: a bar per job on
                 a terminal, one key=value line per change otherwise

SOCKET is a UNIX socket path, unix:PATH, HOST:PORT or tcp:HOST:PORT; the default
is $BLOCKJOBCTL_SOCKET, else /run/blockjobd/qmp.sock.
Arguments are qmp-shell's KEY=VALUE shorthand: VALUE is a JSON number, true,
false, or a JSON object or array, and a string otherwise; a.b=1 nests
({"a": {"b": 1}}). A COMMAND starting with '{' is a whole QMP request in JSON.

Options:
  -c, --compact    print JSON on one line (one-shot mode)
  -h, --help       show this help and exit
  -V, --version    show the version and exit

watch options:
  --interval SECONDS   poll every SECONDS (default 0.5); events poll at once
  --until-ready        also end once every watched job is ready (a mirror in sync)

Exit status: 0 success; 1 the command returned a QMP error (watch: the job
failed, was cancelled or does not exist); 2 bad usage or no connection.
See blockjobctl(1).
)";

int usage_error(const std::string& msg)
{
    std::cerr << "blockjobctl: " << msg << "\nTry 'blockjobctl --help'.\n";
    return ctl::exit_usage;
}

asio::awaitable<int> one_shot(client::connection& conn, client::parsed_line req, bool compact)
{
    // (Not a conditional expression: GCC 12 miscompiles co_await inside one.)
    json::object reply;
    if (req.raw) {
        reply = co_await conn.send(std::move(req.request));
    } else {
        reply = co_await conn.execute(req.command, std::move(req.arguments));
    }
    if (reply.contains("error")) {
        std::cerr << "blockjobctl: " << client::error_text(reply) << "\n";
        co_return ctl::exit_qmp_error;
    }
    const json::value* ret = reply.if_contains("return");
    json::value v = ret ? *ret : json::value(reply);
    std::cout << (compact ? json::serialize(v) : client::pretty_json(v)) << std::endl;
    co_return ctl::exit_ok;
}

enum class mode { shell, one_shot, watch };

} // namespace

int main(int argc, char** argv)
{
    std::signal(SIGPIPE, SIG_IGN);
    std::vector<std::string> args(argv + 1, argv + argc);
    bool compact = false;
    std::vector<std::string> pos;
    // Options come before SOCKET; after it, everything belongs to the command (its
    // arguments may start with '-'), except watch's own options.
    std::size_t i = 0;
    for (; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help") {
            std::cout << usage_text;
            return ctl::exit_ok;
        }
        if (a == "-V" || a == "--version") {
            std::cout << "blockjobctl " << BJD_VERSION << "\n";
            return ctl::exit_ok;
        }
        if (a == "-c" || a == "--compact") {
            compact = true;
            continue;
        }
        if (a == "--") {
            ++i;
            break;
        }
        if (a.size() > 1 && a[0] == '-') {
            return usage_error("unknown option '" + a + "'");
        }
        break;
    }
    pos.assign(args.begin() + static_cast<std::ptrdiff_t>(i), args.end());

    std::string addr_text;
    if (!pos.empty()) {
        addr_text = pos[0];
    } else if (const char* env = std::getenv("BLOCKJOBCTL_SOCKET"); env && *env) {
        addr_text = env;
    } else {
        addr_text = default_socket;
    }
    mode m = pos.size() <= 1 ? mode::shell : pos[1] == "watch" ? mode::watch : mode::one_shot;

    client::parsed_line request;
    ctl::watch_options wopts;
    if (m == mode::one_shot) {
        try {
            if (pos[1].starts_with('{')) {
                if (pos.size() > 2) {
                    return usage_error("a JSON request takes no further arguments");
                }
                request = client::parse_line(pos[1]);
            } else {
                request = client::parse_words(std::vector<std::string>(pos.begin() + 1, pos.end()));
            }
        } catch (const client::shorthand_error& e) {
            return usage_error(e.what());
        }
    } else if (m == mode::watch) {
        for (std::size_t k = 2; k < pos.size(); ++k) {
            const std::string& a = pos[k];
            if (a == "--until-ready") {
                wopts.until_ready = true;
            } else if (a == "--interval" || a.starts_with("--interval=")) {
                std::string v;
                if (a == "--interval") {
                    if (k + 1 >= pos.size()) {
                        return usage_error("--interval needs a value");
                    }
                    v = pos[++k];
                } else {
                    v = a.substr(11);
                }
                char* end = nullptr;
                double d = std::strtod(v.c_str(), &end);
                if (v.empty() || *end || !(d >= 0.05 && d <= 3600)) {
                    return usage_error("--interval takes seconds between 0.05 and 3600, not '" + v + "'");
                }
                wopts.interval = d;
            } else if (a.size() > 1 && a[0] == '-') {
                return usage_error("unknown watch option '" + a + "'");
            } else if (wopts.job) {
                return usage_error("watch takes one JOB");
            } else {
                wopts.job = a;
            }
        }
    }

    asio::io_context loop;
    int status = ctl::exit_usage;
    auto addr = client::address::parse(addr_text);
    auto main_co = [&]() -> asio::awaitable<int> {
        client::connection conn(loop.get_executor());
        try {
            co_await conn.connect(addr);
            co_await conn.negotiate();
        } catch (const client::client_error& e) {
            std::cerr << "blockjobctl: " << e.what() << "\n";
            co_return ctl::exit_usage;
        }
        try {
            switch (m) {
            case mode::shell:
                co_return co_await ctl::run_shell(conn, addr.to_string());
            case mode::one_shot:
                co_return co_await one_shot(conn, std::move(request), compact);
            case mode::watch:
                co_return co_await ctl::run_watch(conn, wopts);
            }
        } catch (const client::client_error& e) {
            std::cerr << "blockjobctl: " << e.what() << "\n";
        }
        co_return ctl::exit_usage;
    };
    asio::co_spawn(loop, main_co(), [&](std::exception_ptr e, int rc) {
        if (e) {
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                std::cerr << "blockjobctl: " << ex.what() << "\n";
            }
            rc = ctl::exit_usage;
        }
        status = rc;
        loop.stop();
    });
    loop.run();
    return status;
}
