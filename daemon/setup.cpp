// SPDX-License-Identifier: MIT
#include "setup.hpp"

#include "bjd/io/huge_pages.hpp"
#include "bjd/log.hpp"
#include "bjd/net/listener.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qapi/keyval.hpp"
#include "bjd/qapi/types.hpp"
#include "bjd/qmp/exports.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/json/parse.hpp>

#include <systemd/sd-daemon.h>

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <system_error>
#include <utility>

namespace bjd::daemon {

namespace asio = boost::asio;
namespace json = boost::json;

namespace {

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

/// An option's value the way qemu-storage-daemon reads it: JSON when it starts with '{',
/// else key=value pairs whose first may leave out `implied_key=` (when there is one).
struct option_value {
    json::value v;
    bool keyval = false;   ///< strings to convert to the schema's types (decode_keyval)
};

option_value parse_option(const std::string& value, std::string_view implied_key = {})
{
    if (!value.empty() && value[0] == '{') {
        boost::system::error_code ec;
        json::value v = json::parse(value, ec);
        if (ec)
            fail("JSON parse error in '" + value + "': " + ec.message());
        return {std::move(v), false};
    }
    auto kv = qapi::parse_keyval(value, implied_key);
    if (!kv)
        fail(kv.error().desc);
    return {json::value(std::move(*kv)), true};
}

/// Decodes an option into the QAPI type that the matching QMP command takes (generated from
/// schemas/), so that the command line accepts what QMP accepts, with QMP's errors.
template <class T>
T decode_option(option_value o)
{
    auto decode = [](const json::value& v) { return qapi::decode<T>(v); };
    qapi::result<T> r = o.keyval ? qapi::decode_keyval<T>(std::move(o.v), decode) : decode(o.v);
    if (!r)
        fail(r.error().desc);
    return std::move(*r);
}

template <class T>
T decode_option(const std::string& value)
{
    return decode_option<T>(parse_option(value));
}

/// The option as QEMU names it in a startup error ("--export type=nbd,...: ").
std::string option_text(const ordered_option& o)
{
    using k = ordered_option::kind;
    const char* name = "";
    switch (o.what) {
    case k::blockdev: name = "--blockdev"; break;
    case k::drive: name = "--drive"; break;
    case k::chardev: name = "--chardev"; break;
    case k::monitor: name = "--monitor"; break;
    case k::nbd_server: name = "--nbd-server"; break;
    case k::export_: name = "--export"; break;
    case k::object: name = "--object"; break;
    }
    return std::string(name) + " " + o.value;
}

std::string get_string(const json::object& o, const char* key, const std::string& def = {})
{
    auto it = o.find(key);
    return it != o.end() && it->value().is_string() ? std::string(it->value().as_string()) : def;
}

bool is_on(const std::string& v) { return v == "on" || v == "yes" || v == "true" || v.empty(); }

} // namespace

runtime::runtime(asio::io_context& loop)
    : loop_(loop), main_loop_(loop), server_(loop), ctx_(loop, server_)
{
    ctx_.main_loop = &main_loop_;
    std::string reason;
    engine_ = io::make_engine(loop_, io::backend::io_uring, {}, &reason);
    threads_ = io::make_engine(loop_, io::backend::threads);
    ctx_.io.backend = io::to_string(engine_->kind());
    ctx_.io.fallback_reason = reason;
    if (!reason.empty())
        log::get("daemon")->warn("io_uring is not available, using the thread pool for all I/O: {}", reason);
    else
        log::get("daemon")->info("I/O engine: io_uring");
    ctx_.io.huge_pages = io::huge_pages::available();
    if (!ctx_.io.huge_pages)
        log::get("daemon")->warn("transparent huge pages are off: large I/O buffers use 4 KiB pages, and a device that "
                                 "takes fewer segments per request gets each 1 MiB request in pieces");
    // The main loop's measure of whether polling pays (docs/polling.md): requests its engines took.
    main_loop_.set_progress([this] {
        std::uint64_t n = 0;
        for (const auto* e : {engine_.get(), threads_.get()}) {
            const auto s = e->stats();
            n += s.reads + s.writes + s.syncs + s.fallocates + s.clones;
        }
        return n;
    });
    graph_ = std::make_unique<block::graph>(*engine_, *threads_);
    graph_->set_objects(objects_);
    ctx_.graph = graph_.get();
    jobs_ = std::make_unique<jobs::manager>(loop_, server_);
    ctx_.jobs = jobs_.get();
    exports_ = std::make_unique<exports::manager>(loop_, server_);
    exports_->set_io_gate(graph_->gate());
    exports_->set_io_engine(*engine_);
    exports_->set_objects(objects_);
    ctx_.exports = exports_.get();
    // What --poll-queued counts: the clients' requests in flight, not the jobs' (a mirror keeps
    // 16 in flight, and would spin the loop for the whole copy).
    main_loop_.set_in_flight([this] { return exports_->requests_executing(); });
    ctx_.chardevs = &chardev_registry_;
    ctx_.objects = &objects_;
    ctx_.request_quit = [this] { request_quit(); };
    ctx_.prepare_quit = [this]() -> asio::awaitable<void> { co_await stop_work(); };
    server_.attach(ctx_);
}

runtime::~runtime() = default;

asio::awaitable<void> runtime::apply(const options& opts)
{
    main_loop_.set_params({opts.poll_max_ns.value_or(default_poll_max_ns), 0, 0, opts.poll_probe, opts.poll_queued});
    if (opts.nbd_threads)
        exports_->set_worker_loops(*opts.nbd_threads, main_loop_.params());
    // --state-dir with saved jobs: requests from outside (exports) wait at the graph's gate
    // until the jobs are back, so that no write reaches a source before its job tracks it.
    std::optional<block::io_gate::section> held;
    if (opts.state_dir) {
        // Before the command line's nodes open the images: their identity is noted as the
        // last stop left them.
        state_ = std::make_unique<qmp::state_dir>(*opts.state_dir);
        state_->load();
        ctx_.state = state_.get();
        jobs_->set_status_listener([this](const jobs::job& j, jobs::job_status s) { state_->job_status(j, s); });
        jobs_->set_end_hook([this](jobs::job& j, bool success) { return state_->job_ending(j, success); });
        if (state_->has_saved_jobs()) {
            auto section = co_await graph_->gate().drain();
            held.emplace(std::move(section));
        }
    }
    // Monitors come up listening, but their clients are served once the whole command line
    // is applied (as in QEMU, whose main loop runs only then): the first command sees every
    // node, server and export the command line asked for.
    server_.hold_clients();
    using k = ordered_option::kind;
    for (const auto& o : opts.objects) {
        // A failure names the option, as qemu-storage-daemon's do.
        try {
            switch (o.what) {
            case k::blockdev: co_await add_blockdev(o.value); break;
            case k::drive: co_await add_drive(o.value); break;
            case k::chardev: add_chardev(o.value); break;
            case k::monitor: add_monitor(o.value); break;
            case k::nbd_server: co_await add_nbd_server(o.value); break;
            case k::export_: co_await add_export(o.value); break;
            case k::object: add_object(o.value); break;
            }
        } catch (const std::runtime_error& e) {
            fail(option_text(o) + ": " + e.what());
        }
    }
    if (state_) {
        // The saved jobs' nodes (the command line's when identical), then the exports of
        // them that the command line asked for, then the jobs: the order they had when they
        // were set up over QMP.
        co_await state_->restore_nodes(ctx_);
        for (const auto& e : std::exchange(waiting_exports_, {})) {
            try {
                co_await add_export(e, false);
            } catch (const std::runtime_error& err) {
                fail(option_text({k::export_, e}) + ": " + err.what());
            }
        }
        co_await state_->restore_jobs(ctx_, opts.resume_jobs);
    }
    held.reset();
    if (opts.metrics) {
        metrics_ = std::make_unique<metrics::server>(loop_, [this] {
            std::vector<metrics::loop_sample> loops{{std::string(io::main_loop_id), main_loop_.stats()}};
            for (const auto& s : exports_->worker_loop_stats())
                loops.push_back({"nbd-" + std::to_string(loops.size()), s});
            return metrics::render(*graph_, jobs_.get(), loops);
        });
        metrics_->listen(*opts.metrics);
    }
    server_.release_clients();
    if (opts.pidfile) {
        FILE* f = std::fopen(opts.pidfile->c_str(), "w");
        if (!f)
            fail("Cannot open pid file '" + *opts.pidfile + "'");
        std::fprintf(f, "%d\n", static_cast<int>(::getpid()));
        std::fclose(f);
        pidfile_ = opts.pidfile;
    }
}

asio::awaitable<void> runtime::add_blockdev(const std::string& value)
{
    auto bo = decode_option<qapi::blockdev_options>(value);
    auto r = co_await graph_->add(bo);
    if (!r)
        fail(r.error().desc);
    if (state_)
        state_->remember_node((*r)->name(), qapi::to_json(bo).as_object());
}

asio::awaitable<void> runtime::add_drive(const std::string& value)
{
    // The same members and checks as QMP's x-drive-add.
    auto args = decode_option<qapi::x_drive_add_args>(value);
    auto r = co_await qapi::qmp_x_drive_add(ctx_, std::move(args));
    if (!r)
        fail(r.error().desc);
}

void runtime::add_object(const std::string& value)
{
    // QEMU's --object: key=value pairs with the type first ("secret,id=s0,file=/k"), or JSON.
    auto oo = decode_option<qapi::object_options>(parse_option(value, "qom-type"));
    if (auto a = objects_.add(oo); !a)
        fail(a.error().desc);
}

asio::awaitable<void> runtime::add_nbd_server(const std::string& value)
{
    // qemu-storage-daemon's NbdServerOptions (nbd-server-start's arguments, with the flat
    // SocketAddress), started by the code nbd-server-start runs.
    auto o = decode_option<qapi::nbd_server_options>(value);
    if (auto r = qmp::start_nbd_server(ctx_, o); !r)
        fail(r.error().desc);
    co_return;
}

asio::awaitable<void> runtime::add_export(const std::string& value, bool may_wait)
{
    // qemu-storage-daemon's --export: BlockExportOptions ("nbd,id=..." means type=nbd), run
    // through block-export-add itself.
    option_value o = parse_option(value, "type");
    // blockjobd's extension, the statistics keys of --drive (stats-intervals.N,
    // stats-account-invalid, stats-account-failed), are not BlockExportOptions members: they
    // are taken out first and decoded as x-drive-add's members of the same names, then applied
    // by x-blockdev-set-stats to what the export serves.
    option_value stats{json::object(), o.keyval};
    if (o.v.is_object()) {
        for (const char* key : {"stats-intervals", "stats-account-invalid", "stats-account-failed"}) {
            if (auto* m = o.v.as_object().if_contains(key)) {
                stats.v.as_object()[key] = std::move(*m);
                o.v.as_object().erase(key);
            }
        }
    }
    auto args = decode_option<qapi::block_export_options>(std::move(o));
    std::optional<qapi::x_drive_add_args> st;
    if (!stats.v.as_object().empty()) {
        stats.v.as_object()["id"] = args.id;
        st = decode_option<qapi::x_drive_add_args>(std::move(stats));
    }
    // --state-dir: an export of a node that a saved job's restore adds waits for it.
    if (may_wait && state_ && !graph_->drives().find(args.node_name) && !graph_->find(args.node_name) &&
        state_->will_restore_node(args.node_name)) {
        waiting_exports_.push_back(value);
        co_return;
    }
    std::string node_name = args.node_name;
    if (auto r = co_await qapi::qmp_block_export_add(ctx_, std::move(args)); !r)
        fail(r.error().desc);
    if (st) {
        qapi::x_blockdev_set_stats_args sa{node_name, std::move(st->stats_intervals), st->stats_account_invalid,
                                           st->stats_account_failed};
        if (auto r = co_await qapi::qmp_x_blockdev_set_stats(ctx_, std::move(sa)); !r)
            fail(r.error().desc);
    }
}

void runtime::add_chardev(const std::string& value)
{
    auto kv = qapi::parse_keyval(value, "backend");
    if (!kv)
        fail(kv.error().desc);
    std::string backend = get_string(*kv, "backend");
    std::string id = get_string(*kv, "id");
    if (id.empty())
        fail("chardev: \"id\" is required");
    if (chardevs_.count(id) || chardev_registry_.contains(id))
        fail("attempt to add duplicate property '" + id + "' to object (type 'container')");
    if (backend == "ringbuf" || backend == "memory") {
        std::int64_t size = chardev::default_ringbuf_size;
        if (auto sz = get_string(*kv, "size"); !sz.empty()) {
            char* end = nullptr;
            errno = 0;
            long long v = std::strtoll(sz.c_str(), &end, 0);
            if (errno || *end)
                fail("Parameter 'size' expects a size value");
            size = v;
        }
        if (auto r = chardev_registry_.add_ringbuf(id, size, backend == "memory"); !r)
            fail(r.error().desc);
        return;
    }
    if (backend != "socket")
        fail("chardev '" + id + "': backend '" + backend + "' is not supported (only 'socket', 'ringbuf', 'memory')");
    if (!is_on(get_string(*kv, "server", "off")))
        fail("chardev '" + id + "': only server=on sockets are supported");
    qmp::listen_address addr;
    if (auto fd = get_string(*kv, "fd"); !fd.empty()) {
        try {
            addr = qmp::listen_address::inherited(net::inherited_fd(fd));
        } catch (const std::system_error& e) {
            fail("chardev '" + id + "': " + e.what());
        }
    } else if (auto path = get_string(*kv, "path"); !path.empty()) {
        addr = qmp::listen_address::unix_socket(path);
        if (auto mode = get_string(*kv, "mode"); !mode.empty()) {
            char* end = nullptr;
            unsigned long m = std::strtoul(mode.c_str(), &end, 8);
            if (*end || m > 07777)
                fail("chardev '" + id + "': mode=" + mode + " is not an octal permission mode");
            addr.mode = static_cast<unsigned>(m);
        }
        addr.owner = get_string(*kv, "owner");
        addr.group = get_string(*kv, "group");
    } else {
        std::string port = get_string(*kv, "port");
        if (port.empty())
            fail("chardev '" + id + "': socket needs path=, host=/port= or fd=");
        addr = qmp::listen_address::inet(get_string(*kv, "host", "127.0.0.1"), port);
    }
    chardevs_[id] = addr;
    (void)chardev_registry_.add_socket(id, addr.type == qmp::listen_address::kind::unix_socket ? "unix:" + addr.path + ",server=on"
                                           : addr.type == qmp::listen_address::kind::inet
                                               ? "tcp:" + addr.host + ":" + addr.port + ",server=on"
                                               : "fd:" + std::to_string(addr.fd) + ",server=on");
}

void runtime::add_monitor(const std::string& value)
{
    auto kv = qapi::parse_keyval(value, "chardev");
    if (!kv)
        fail(kv.error().desc);
    std::string id = get_string(*kv, "chardev");
    auto it = chardevs_.find(id);
    if (it == chardevs_.end())
        fail("chardev \"" + id + "\" not found");
    if (auto mode = get_string(*kv, "mode", "control"); mode != "control")
        fail("Only QMP is supported");
    try {
        server_.listen(it->second);
    } catch (const std::exception& e) {
        fail("Failed to listen on chardev '" + id + "': " + e.what());
    }
}

void runtime::request_quit()
{
    if (quitting_)
        return;
    quitting_ = true;
    asio::co_spawn(loop_, shutdown(), asio::detached);
}

asio::awaitable<void> runtime::stop_work()
{
    if (work_stopped_)
        co_return;
    work_stopped_ = true;
    // The shutdown begins (quit, SIGTERM, SIGINT): systemd shows the unit as deactivating.
    ::sd_notify(0, "STOPPING=1\nSTATUS=shutting down");
    if (metrics_)
        metrics_->stop();
    try {
        // QEMU's order: exports first (BLOCK_EXPORT_DELETED, clients drained), then jobs
        // (force-cancelled; their events still go out).
        co_await exports_->shutdown();
        // --state-dir: jobs pause and their progress is taken before they are cancelled.
        if (state_)
            co_await state_->save_all(ctx_);
        co_await jobs_->shutdown();
    } catch (const std::exception& e) {
        log::get("daemon")->error("shutdown: {}", e.what());
    }
}

asio::awaitable<void> runtime::shutdown()
{
    co_await stop_work();
    try {
        // QEMU's bdrv_close_all: with exports and jobs gone, every node's cached metadata
        // goes to its file before the engines stop taking I/O.
        co_await graph_->close_all();
        // The images are final now: their identity goes with the saved progress.
        if (state_)
            state_->finish_shutdown();
    } catch (const std::exception& e) {
        log::get("daemon")->error("shutdown: {}", e.what());
    }
    try {
        co_await server_.shutdown();
    } catch (const std::exception& e) {
        log::get("daemon")->error("shutdown: {}", e.what());
    }
    if (pidfile_)
        ::unlink(pidfile_->c_str());
    co_await engine_->drain();
    co_await threads_->drain();
    loop_.stop();
}

} // namespace bjd::daemon
