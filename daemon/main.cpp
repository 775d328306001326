// SPDX-License-Identifier: MIT
// blockjobd: wiring only. Parses the command line, brings up the I/O engines, the block graph,
// the QMP server and what the command line asks for, tells systemd it is ready, and runs the
// main event loop until `quit` or a signal.
#include "options.hpp"
#include "setup.hpp"

#include "bjd/log.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <systemd/sd-daemon.h>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
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

/// SIGINT and SIGTERM start the shutdown (again: ignored, it is under way); SIGHUP reopens the
/// logs, as daemons do for logrotate, and never stops the daemon.
asio::awaitable<void> wait_for_signals(daemon::runtime& rt, asio::signal_set& signals)
{
    for (;;) {
        auto [ec, sig] = co_await signals.async_wait(bjd::nothrow_awaitable);
        if (ec)
            co_return;
        if (sig == SIGHUP) {
            log::get("daemon")->info("SIGHUP: {}", log::reopen());
            continue;
        }
        log::get("daemon")->info("signal {}: shutting down", sig);
        rt.request_quit();
    }
}

/// WatchdogSec= (sd_watchdog_enabled(3)): WATCHDOG=1 at half the interval, from the main
/// loop's own timer, so a loop that stops turning stops the pings and systemd restarts us.
asio::awaitable<void> watchdog(std::uint64_t usec)
{
    asio::steady_timer timer(co_await asio::this_coro::executor);
    const auto period = std::chrono::microseconds(usec / 2);
    for (;;) {
        ::sd_notify(0, "WATCHDOG=1");
        timer.expires_after(period);
        auto [ec] = co_await timer.async_wait(bjd::nothrow_awaitable);
        if (ec)
            co_return;
    }
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
    asio::co_spawn(loop, wait_for_signals(rt, signals), asio::detached);
    // sd_watchdog_enabled checks WATCHDOG_PID against our pid (it changes with --daemonize).
    std::uint64_t watchdog_usec = 0;
    if (::sd_watchdog_enabled(1, &watchdog_usec) > 0 && watchdog_usec > 0) {
        log::get("daemon")->info("watchdog: WATCHDOG=1 every {} ms", watchdog_usec / 2000);
        asio::co_spawn(loop, watchdog(watchdog_usec), asio::detached);
    }
    rt.run();
    // STOPPING=1 went out when the shutdown began (runtime::stop_work).
    return rt.exit_code();
}
