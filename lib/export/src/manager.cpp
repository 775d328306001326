// SPDX-License-Identifier: MIT
// Export manager: NBD server life cycle and the export table, with qsd 7.2's error texts.
#include "bjd/export/manager.hpp"

#include "nbd_connection.hpp"
#include "nbd_server.hpp"

#include "bjd/id.hpp"
#include "bjd/log.hpp"
#include "bjd/qapi/events.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cctype>

namespace bjd::exports {

manager::manager(asio::io_context& loop, std::function<void(const std::string&)> on_deleted)
    : loop_(loop)
    , on_deleted_(std::move(on_deleted))
    , tracker_(std::make_shared<detail::connection_tracker>(loop))
    , gone_(loop, asio::steady_timer::time_point::max())
{
}

manager::manager(asio::io_context& loop, qapi::event_sink& events)
    : manager(loop, [&events](const std::string& id) { qapi::emit_block_export_deleted(events, {.id = id}); })
{
}

manager::~manager()
{
    if (server_)
        server_->stop();
    tracker_->loops.join();
}

void manager::set_io_engine(io::engine& e)
{
    tracker_->loops.main_loop().buffers.register_with([&e](std::span<std::byte> b) { return e.register_range(b); });
}

void manager::set_worker_loops(unsigned n, const io::poll_params& polling)
{
    tracker_->loops.set_workers(n, polling);
}

std::vector<io::poll_stats> manager::worker_loop_stats() const
{
    return tracker_->loops.worker_stats();
}

std::uint64_t manager::requests_executing() const noexcept
{
    return tracker_->loops.executing();
}

qapi::result<void> manager::start_server(const nbd_server_options& opts)
{
    if (server_)
        return qapi::generic("NBD server already running");
    std::shared_ptr<crypto::tls_creds> creds;
    if (opts.tls_creds) {
        if (!objects_)
            return qapi::generic("No TLS credentials with id '" + *opts.tls_creds + "'");
        auto c = objects_->tls_creds_for(*opts.tls_creds, crypto::endpoint::server);
        if (!c)
            return c.error();
        creds = std::move(*c);
    }
    // QEMU 7.2 accepts tls-authz alone and then serves plaintext to anyone; refusing it
    // keeps an operator from believing clients are checked when they are not.
    if (opts.tls_authz && !opts.tls_creds)
        return qapi::generic("'tls-authz' is only supported with 'tls-creds'");
    auto s = std::make_unique<detail::nbd_server>(*this, tracker_);
    if (auto r = s->listen(opts); !r)
        return r;
    server_ = std::move(s);
    tls_creds_ = std::move(creds);
    tls_authz_ = opts.tls_authz;
    if (tls_creds_)
        log::get("nbd")->info("NBD server requires TLS ({} '{}'{}{})", crypto::to_string(tls_creds_->kind()),
                              tls_creds_->id(), tls_authz_ ? ", tls-authz " : "", tls_authz_.value_or(""));
    return {};
}

qapi::result<void> manager::stop_server()
{
    if (!server_)
        return qapi::generic("NBD server not running");
    server_->stop();
    server_.reset();
    tls_creds_.reset();
    tls_authz_.reset();
    // Like QEMU's nbd_server_free: every NBD export goes, clients are disconnected.
    auto copy = exports_;
    for (auto& e : copy) {
        if (!e->shutting_down()) {
            std::string id = e->id();
            e->begin_shutdown(true, [this, id] { finish_delete(id); });
        }
    }
    // Clients still in the handshake cannot reach any export any more; drop them too.
    for (auto& w : tracker_->all)
        if (auto c = w.lock())
            c->close();
    return {};
}

asio::awaitable<qapi::result<void>> manager::stop_server_and_wait()
{
    std::vector<std::string> ids;
    for (auto& e : exports_)
        ids.push_back(e->id());
    auto r = stop_server();
    if (!r)
        co_return r;
    for (const auto& id : ids)
        co_await wait_gone(id);
    co_return r;
}

asio::awaitable<void> manager::wait_gone(const std::string& id)
{
    for (;;) {
        auto e = find_by_id(id);
        if (!e || !e->shutting_down())
            co_return;
        co_await gone_.async_wait(bjd::nothrow_awaitable);
    }
}

std::string manager::server_address() const
{
    return server_ ? server_->address() : std::string();
}

void manager::serve(asio::generic::stream_protocol::socket sock)
{
    detail::connection::start(std::make_shared<detail::connection>(*this, std::move(sock), tracker_));
}

qapi::result<void> manager::check_new_id(std::string_view id) const
{
    if (!id_wellformed(id))
        return qapi::generic("Invalid block export id");
    if (find_by_id(id))
        return qapi::generic("Block export id '" + std::string(id) + "' is already in use");
    return {};
}

qapi::result<void> manager::add(export_options opts, std::shared_ptr<block::node> n)
{
    if (auto r = check_new_id(opts.id); !r)
        return r;
    if (opts.writable && n->read_only())
        return qapi::generic("Cannot export read-only node as writable");
    if (!server_)
        return qapi::generic("NBD server not running");
    if (opts.name.empty() && opts.node_name.empty())
        opts.node_name = n->name();
    if (opts.name.empty())
        opts.name = opts.node_name;
    if (opts.name.size() > nbd::max_string)
        return qapi::generic("export name '" + opts.name + "' too long");
    if (opts.description && opts.description->size() > nbd::max_string)
        return qapi::generic("description '" + *opts.description + "' too long");
    for (auto& e : exports_)
        if (e->name() == opts.name)
            return qapi::generic("NBD server already has export named '" + opts.name + "'");
    auto e = std::make_shared<block_export>(std::move(opts), std::move(n), gate_);
    if (auto r = e->claim_permissions(); !r)
        return r;
    if (auto r = e->claim_bitmaps(); !r)
        return r;
    log::get("nbd")->info("export '{}' added: NBD name '{}', node '{}', {}", e->id(), e->name(),
                          e->node_name(), e->writable() ? "writable" : "read-only");
    exports_.push_back(std::move(e));
    return {};
}

qapi::result<void> manager::del(std::string_view id, bool hard)
{
    auto e = find_by_id(id);
    if (!e)
        return qapi::generic("Export '" + std::string(id) + "' is not found");
    if (e->shutting_down())
        return qapi::generic("Export '" + std::string(id) + "' is already shutting down");
    if (!hard && e->active_clients() > 0)
        return qapi::error{qapi::error_class::generic_error, "export '" + std::string(id) + "' still in use",
                           "Use mode='hard' to force client disconnect"};
    std::string sid(id);
    e->begin_shutdown(hard, [this, sid] { finish_delete(sid); });
    return {};
}

asio::awaitable<qapi::result<void>> manager::remove(std::string id, bool hard)
{
    auto r = del(id, hard);
    if (r && !hard)
        co_await wait_gone(id);
    co_return r;
}

void manager::finish_delete(const std::string& id)
{
    auto it = std::find_if(exports_.begin(), exports_.end(), [&](auto& e) { return e->id() == id; });
    if (it == exports_.end())
        return;
    auto e = *it;
    exports_.erase(it);
    e->release();
    log::get("nbd")->info("export '{}' deleted", id);
    if (on_deleted_)
        on_deleted_(id);
    gone_.cancel();   // wakes remove() callers; the timer never expires
}

std::vector<export_info> manager::query() const
{
    std::vector<export_info> out;
    for (auto it = exports_.rbegin(); it != exports_.rend(); ++it)
        out.push_back({"nbd", (*it)->id(), (*it)->node_name(), (*it)->shutting_down()});
    return out;
}

std::shared_ptr<block_export> manager::find_by_name(std::string_view name) const
{
    for (auto& e : exports_)
        if (e->name() == name && !e->shutting_down())
            return e;
    return nullptr;
}

std::shared_ptr<block_export> manager::find_by_id(std::string_view id) const
{
    for (auto& e : exports_)
        if (e->id() == id)
            return e;
    return nullptr;
}

std::vector<std::shared_ptr<block_export>> manager::listable() const
{
    std::vector<std::shared_ptr<block_export>> out;
    for (auto& e : exports_)
        if (!e->shutting_down())
            out.push_back(e);
    return out;
}

asio::awaitable<void> manager::shutdown()
{
    if (server_)
        (void)stop_server();
    auto copy = exports_;
    for (auto& e : copy) {
        if (!e->shutting_down()) {
            std::string id = e->id();
            e->begin_shutdown(true, [this, id] { finish_delete(id); });
        }
    }
    for (auto& w : tracker_->all)
        if (auto c = w.lock())
            c->close();
    while (tracker_->live > 0)
        co_await tracker_->changed.async_wait(bjd::nothrow_awaitable);
}

} // namespace bjd::exports
