// SPDX-License-Identifier: MIT
#include "options.hpp"

#include <charconv>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <type_traits>

namespace bjd::daemon {

const char* usage_text()
{
    return R"(Usage: blockjobd [options]
A block-job daemon compatible with QEMU 7.2's qemu-storage-daemon.

  -h, --help                display this help and exit
  -V, --version             output version information and exit

  --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]
             [,cache.direct=on|off][,cache.no-flush=on|off]
             [,read-only=on|off][,auto-read-only=on|off]
             [,force-share=on|off][,detect-zeroes=on|off|unmap]
             [,<driver-specific options>]
  --blockdev <json>         configure a block node (drivers: file, raw, qcow2, nbd,
                            rbd, null-co, null-aio, blkdebug)

  --drive id=<id>[,node-name=<node>][,removable=on|off][,tray=on|off]
          [,tray-open=on|off][,locked=on|off][,stats-intervals.N=<secs>]
          [,stats-account-invalid=on|off][,stats-account-failed=on|off]
                            a named drive holding node <node> (or empty, if removable),
                            as QMP's x-drive-add; exports of <id> follow its medium

  --chardev socket,id=<id>,path=<path>[,server=on][,wait=off][,owner=<user>][,group=<group>][,mode=<octal>]
  --chardev socket,id=<id>,host=<host>,port=<port>[,server=on][,wait=off]
  --chardev socket,id=<id>,fd=<n>|<name>[,server=on][,wait=off]
                            a QMP listening socket (UNIX or loopback TCP); owner, group and
                            mode are set before it listens, and it is never world-writable;
                            fd= takes a socket passed by systemd (a FileDescriptorName= from
                            LISTEN_FDNAMES, or a number)
  --chardev ringbuf,id=<id>[,size=<bytes>]
                            a ring buffer (size a power of two, default 65536), read and
                            written with ringbuf-read/ringbuf-write; 'memory' is an alias

  --monitor [chardev=]<id>[,mode=control][,pretty=on|off]
                            run a QMP monitor on chardev <id>

  --nbd-server addr.type=unix,addr.path=<path>[,max-connections=<n>]
  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>
  --nbd-server addr.type=fd,addr.str=<n>|<name>
  --nbd-server ...[,tls-creds=<id>][,tls-authz=<id>]
  --nbd-server <json>       start an NBD server, as QMP's nbd-server-start (with the flat
                            address); fd takes a socket passed by systemd, by
                            FileDescriptorName= or number; with tls-creds, clients must
                            use TLS (NBD_OPT_STARTTLS), and tls-authz admits one identity

  --object secret,id=<id>,file=<path>[,format=raw|base64]
                            a secret read from a file (data=<value> works too, but shows
                            in the process list)
  --object tls-creds-x509,id=<id>,dir=<dir>,endpoint=server|client[,verify-peer=on|off]
           [,priority=<gnutls priority>][,passwordid=<secret id>]
                            x509 credentials: <dir> holds ca-cert.pem and server-cert.pem,
                            server-key.pem (or client-cert.pem, client-key.pem), and
                            optionally ca-crl.pem, dh-params.pem
  --object tls-creds-psk,id=<id>,dir=<dir>,endpoint=server|client[,username=<user>]
                            pre-shared keys: <dir>/keys.psk holds <user>:<hexkey> lines
  --object authz-simple,id=<id>,identity=<name>
                            the one client tls-authz admits: its certificate's DN (commas
                            doubled, e.g. O=Example,,CN=client) or its PSK username

  --export [type=]nbd,id=<id>,node-name=<node>[,name=<name>]
           [,writable=on|off][,writethrough=on|off][,description=<text>]
           [,bitmaps.N=<bitmap>][,bitmaps.N.node=<node>,bitmaps.N.name=<bitmap>]
           [,stats-intervals.N=<secs>][,stats-account-invalid=on|off]
           [,stats-account-failed=on|off]
  --export <json>           export a block node (or a drive) over NBD, as QMP's
                            block-export-add (the same members and errors); the stats-*
                            keys (blockjobd's) configure the exported node's accounting

  --pidfile <path>          write the process ID to <path> once everything is set up
  --daemonize               detach from the terminal once set up; the parent exits only
                            when the daemon is ready (or with its error)

blockjobd options:
  --log-level <level>       trace, debug, info (default), warn or error
  --log-format <format>     terminal, or journal (syslog priority prefixes for
                            systemd-journald; the default when started by systemd)
  --metrics unix:<path>
  --metrics tcp:<host>:<port>
  --metrics fd:<n>|<name>
                            serve Prometheus metrics (block statistics with their start
                            time, timed statistics, latency histograms, node roles, job
                            progress and state, build information)
                            over HTTP at /metrics (UNIX socket, loopback TCP, or a socket
                            passed by systemd)
  --state-dir <dir>         keep running mirror jobs (blockdev-mirror with a job-id) in
                            <dir>: their arguments, the blockdev-add definitions of their
                            nodes, and at a clean stop (SIGTERM, quit) what is left to
                            copy; the next start with the same <dir> brings them back
                            paused, copying only what was left (job-resume carries on);
                            after a crash (kill -9) its last checkpoint and its
                            write-intent log (every source write waits until its 4 MiB
                            region is marked on disk) say what is left
  --resume-jobs             with --state-dir: jobs brought back resume at once
  --nbd-threads <n>         event loops with a thread each that serve NBD connections
                            besides the main one (default 0: every connection on the main
                            loop; see docs/nbd-threads.md for when more pays)
  --poll-max-ns <ns>        how long an event loop (the main one, and those of
                            --nbd-threads) may poll for its next event before it sleeps,
                            adapting to the gaps it sees as QEMU's iothreads do; the
                            loops stop while they measure that polling does not pay
                            (default 128000; 0: never poll; see docs/polling.md)
  --poll-probe on|off       whether the loops measure, every 20 s, that polling pays
                            (default on; off: poll by the gaps alone, as QEMU does)
  --poll-queued <n>         while NBD clients wait on at least <n> requests, the loop
                            serving them polls up to 1 ms for its next event whatever the
                            gaps: for many small requests at a high queue depth; costs a
                            core while they last (default 0: off; see docs/polling.md)
)";
}

namespace {

[[noreturn]] void usage_error(const std::string& msg)
{
    std::fprintf(stderr, "blockjobd: %s\nTry 'blockjobd --help' for more information.\n", msg.c_str());
    std::exit(1);
}

/// The whole of `v` as a number from 0 to `max`, or a usage error saying `what` it takes.
template <typename T>
T number_option(const std::string& v, T max, const std::string& what)
{
    T n = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || end != v.data() + v.size() || (std::is_signed_v<T> && n < 0) || n > max)
        usage_error(what);
    return n;
}

} // namespace

options parse_options(int argc, char** argv)
{
    options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        std::string inline_value;
        bool has_inline = false;
        // Accept both "--opt value" and "--opt=value", and QEMU's single-dash spellings.
        if (arg.size() > 2 && arg[0] == '-' && arg[1] != '-')
            arg = std::string_view(argv[i]);   // -h, -V
        if (auto eq = arg.find('='); eq != std::string_view::npos && arg.rfind("--", 0) == 0) {
            inline_value = std::string(arg.substr(eq + 1));
            arg = arg.substr(0, eq);
            has_inline = true;
        }
        auto value = [&]() -> std::string {
            if (has_inline)
                return inline_value;
            if (i + 1 >= argc)
                usage_error("option '" + std::string(arg) + "' requires an argument");
            return argv[++i];
        };
        using k = ordered_option::kind;
        if (arg == "-h" || arg == "--help") {
            std::fputs(usage_text(), stdout);
            std::exit(0);
        } else if (arg == "-V" || arg == "--version") {
            std::printf("blockjobd version %s (QMP compatible with qemu-storage-daemon 7.2)\n", BJD_VERSION);
            std::exit(0);
        } else if (arg == "--blockdev") {
            o.objects.push_back({k::blockdev, value()});
        } else if (arg == "--drive") {
            o.objects.push_back({k::drive, value()});
        } else if (arg == "--chardev") {
            o.objects.push_back({k::chardev, value()});
        } else if (arg == "--monitor") {
            o.objects.push_back({k::monitor, value()});
        } else if (arg == "--nbd-server") {
            o.objects.push_back({k::nbd_server, value()});
        } else if (arg == "--export") {
            o.objects.push_back({k::export_, value()});
        } else if (arg == "--object") {
            o.objects.push_back({k::object, value()});
        } else if (arg == "--pidfile") {
            o.pidfile = value();
        } else if (arg == "--daemonize") {
            o.daemonize = true;
        } else if (arg == "--log-level") {
            o.log_level = value();
        } else if (arg == "--metrics") {
            o.metrics = value();
            if (!o.metrics->starts_with("unix:") && !o.metrics->starts_with("tcp:") && !o.metrics->starts_with("fd:"))
                usage_error("--metrics takes unix:<path>, tcp:<host>:<port> or fd:<n>|<name>");
        } else if (arg == "--state-dir") {
            o.state_dir = value();
            if (o.state_dir->empty())
                usage_error("--state-dir takes a directory");
        } else if (arg == "--resume-jobs") {
            o.resume_jobs = true;
        } else if (arg == "--nbd-threads") {
            o.nbd_threads = number_option(value(), 64u, "--nbd-threads takes a number from 0 to 64");
        } else if (arg == "--poll-max-ns") {
            o.poll_max_ns = number_option(value(), std::int64_t{1'000'000'000},
                                          "--poll-max-ns takes a number of nanoseconds from 0 to 1000000000");
        } else if (arg == "--poll-probe") {
            const auto v = value();
            if (v != "on" && v != "off")
                usage_error("--poll-probe takes 'on' or 'off'");
            o.poll_probe = v == "on";
        } else if (arg == "--poll-queued") {
            o.poll_queued = number_option(value(), 4096u, "--poll-queued takes a number of requests from 0 to 4096");
        } else if (arg == "--log-format") {
            o.log_format = value();
            if (*o.log_format != "terminal" && *o.log_format != "journal")
                usage_error("--log-format takes 'terminal' or 'journal'");
        } else {
            usage_error("unrecognized option '" + std::string(argv[i]) + "'");
        }
    }
    if (o.resume_jobs && !o.state_dir)
        usage_error("--resume-jobs needs --state-dir");
    return o;
}

} // namespace bjd::daemon
