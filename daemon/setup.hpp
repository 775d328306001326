// SPDX-License-Identifier: MIT
#pragma once
// The daemon's objects and their lifetimes, and applying the command line to them.
#include "options.hpp"

#include "bjd/block/graph.hpp"
#include "bjd/chardev/registry.hpp"
#include "bjd/crypto/objects.hpp"
#include "bjd/export/manager.hpp"
#include "bjd/io/engine.hpp"
#include "bjd/io/poll_loop.hpp"
#include "bjd/jobs/job.hpp"
#include "bjd/metrics/metrics.hpp"
#include "bjd/qmp/context.hpp"
#include "bjd/qmp/server.hpp"
#include "bjd/qmp/state_dir.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <map>
#include <memory>
#include <optional>
#include <string>

namespace bjd::daemon {

class runtime {
public:
    explicit runtime(boost::asio::io_context& loop);
    ~runtime();

    /// Creates every object of the command line, in order. Throws std::runtime_error with a
    /// message for the user on the first failure (startup errors are exceptions).
    boost::asio::awaitable<void> apply(const options& opts);

    /// Starts an orderly shutdown (quit, SIGTERM): jobs are cancelled, responses flushed, the
    /// loop stops. Safe to call more than once.
    void request_quit();

    int exit_code() const noexcept { return exit_code_; }

    /// Runs the main loop until the daemon stops, polling as --poll-max-ns says.
    void run() { main_loop_.run(); }

private:
    boost::asio::awaitable<void> shutdown();
    /// The first half of shutdown, also run by `quit` before it answers: stops /metrics,
    /// closes the exports (BLOCK_EXPORT_DELETED), then force-cancels the jobs. Idempotent.
    boost::asio::awaitable<void> stop_work();
    void add_chardev(const std::string& value);
    void add_monitor(const std::string& value);
    boost::asio::awaitable<void> add_blockdev(const std::string& value);
    boost::asio::awaitable<void> add_drive(const std::string& value);
    boost::asio::awaitable<void> add_nbd_server(const std::string& value);
    /// `may_wait`: an export of a node that a saved job's restore adds is kept in
    /// `waiting_exports_` until the nodes are back (--state-dir).
    boost::asio::awaitable<void> add_export(const std::string& value, bool may_wait = true);
    void add_object(const std::string& value);

    boost::asio::io_context& loop_;
    io::poll_loop main_loop_;
    std::unique_ptr<io::engine> engine_;
    std::unique_ptr<io::engine> threads_;
    crypto::registry objects_;   // before exports_ and graph_, which look objects up
    std::unique_ptr<block::graph> graph_;
    qmp::server server_;
    std::unique_ptr<jobs::manager> jobs_;   // after graph_: jobs hold nodes, so they go first
    std::unique_ptr<exports::manager> exports_;   // likewise: exports hold nodes
    std::unique_ptr<metrics::server> metrics_;    // reads graph_ and jobs_
    qmp::context ctx_;
    std::unique_ptr<qmp::state_dir> state_;   ///< --state-dir
    std::vector<std::string> waiting_exports_;   ///< --export of nodes the state dir brings back
    std::map<std::string, qmp::listen_address> chardevs_;
    chardev::registry chardev_registry_;   // ring buffers, and the sockets for query-chardev
    std::optional<std::string> pidfile_;
    bool quitting_ = false;
    bool work_stopped_ = false;
    int exit_code_ = 0;
};

} // namespace bjd::daemon
