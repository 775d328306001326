// SPDX-License-Identifier: MIT
// blockjobd: wiring only. Parses the command line, brings up the I/O engines, the block graph,
// the QMP server and what the command line asks for, tells systemd it is ready, and runs the
// main event loop until `quit` or a signal.
#include "options.hpp"
#include "setup.hpp"

#include "bjd/log.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <systemd/sd-daemon.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

namespace asio = boost::asio;
using namespace bjd;

namespace {

/// --daemonize: the parent waits for the child's verdict on a pipe and exits with it, so the
/// caller sees setup errors and, on success, a daemon that is already serving.
int daemonize_wait_fd = -1;

void daemonize_or_die()
{
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) {
        std::perror("blockjobd: pipe");
        std::exit(1);
    }
    pid_t pid = ::fork();
    if (pid < 0) {
        std::perror("blockjobd: fork");
        std::exit(1);
    }
    if (pid > 0) {
        ::close(p[1]);
        char status = 1;
        ssize_t n = ::read(p[0], &status, 1);
        std::_Exit(n == 1 ? status : 1);
    }
    ::close(p[0]);
    ::setsid();
    daemonize_wait_fd = p[1];
}

void daemonize_report(char status)
{
    if (daemonize_wait_fd < 0)
        return;
    if (status == 0) {
        int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(null, 1);
        ::dup2(null, 2);
        ::close(null);
    }
    (void)!::write(daemonize_wait_fd, &status, 1);
    ::close(daemonize_wait_fd);
    daemonize_wait_fd = -1;
}

asio::awaitable<void> start(daemon::runtime& rt, const daemon::options& opts)
{
    try {
        co_await rt.apply(opts);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "blockjobd: %s\n", e.what());
        daemonize_report(1);
        std::exit(1);
    }
    daemonize_report(0);
    ::sd_notify(0, "READY=1\nSTATUS=serving");
    log::get("daemon")->info("ready");
}

asio::awaitable<void> wait_for_signal(daemon::runtime& rt, asio::signal_set& signals)
{
    auto [ec, sig] = co_await signals.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec)
        co_return;
    log::get("daemon")->info("signal {}: shutting down", sig);
    rt.request_quit();
}

} // namespace

int main(int argc, char** argv)
{
    daemon::options opts = daemon::parse_options(argc, argv);
    auto level = spdlog::level::from_str(opts.log_level);
    if (level == spdlog::level::off && opts.log_level != "off") {
        std::fprintf(stderr, "blockjobd: unknown log level '%s'\n", opts.log_level.c_str());
        return 1;
    }
    bool journal = opts.log_format ? *opts.log_format == "journal" : std::getenv("JOURNAL_STREAM") != nullptr;
    log::init_logging(level, journal ? log::style::journal : log::style::terminal);

    if (opts.daemonize)
        daemonize_or_die();   // before any thread or ring exists

    asio::io_context loop(1);
    daemon::runtime rt(loop);
    asio::signal_set signals(loop, SIGINT, SIGTERM, SIGHUP);
    ::signal(SIGPIPE, SIG_IGN);

    asio::co_spawn(loop, start(rt, opts), asio::detached);
    asio::co_spawn(loop, wait_for_signal(rt, signals), asio::detached);
    loop.run();
    ::sd_notify(0, "STOPPING=1");
    return rt.exit_code();
}
