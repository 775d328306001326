// SPDX-License-Identifier: MIT
// NBD fixed-newstyle handshake: option haggling up to NBD_OPT_GO / NBD_OPT_EXPORT_NAME.
#include "nbd_connection.hpp"

#include "bjd/log.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <cstdio>

namespace bjd::exports::detail {

using namespace nbd;

namespace {

std::vector<std::byte> string_payload(std::string_view s)
{
    std::vector<std::byte> out;
    writer(out).bytes(s);
    return out;
}

} // namespace

asio::awaitable<bool> connection::send(std::vector<std::byte> bytes)
{
    if (tls_)
        co_return !co_await tls_->write(asio::buffer(bytes));
    auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(bytes), nothrow_awaitable);
    co_return !ec;
}

asio::awaitable<boost::system::error_code> connection::read_exact(asio::mutable_buffer buf)
{
    if (tls_)
        co_return co_await tls_->read(buf);
    auto [ec, n] = co_await asio::async_read(socket_, buf, nothrow_awaitable);
    co_return ec;
}

asio::awaitable<int> connection::refuse_before_tls(std::uint32_t option)
{
    // QEMU's nbd_negotiate_options with tls-creds and a plaintext channel: EXPORT_NAME cannot
    // be answered with an error, so the connection ends; every other option gets
    // NBD_REP_ERR_TLS_REQD (ABORT too, and then the connection ends).
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%x", option);
    const std::string msg = std::string("Option ") + hex + " not permitted before TLS";
    if (option == opt_export_name) {
        log::get("nbd")->info("nbd {}: {}, disconnecting", peer_, msg);
        co_return 0;
    }
    bool ok = co_await send_error(option, rep_err_tls_reqd, msg);
    co_return ok && option != opt_abort ? 1 : 0;
}

asio::awaitable<bool> connection::start_tls(std::uint32_t option, std::size_t length)
{
    if (length != 0) {
        // QEMU's nbd_reject_length(fatal): an error reply, then the connection ends.
        co_await send_error(option, rep_err_invalid, "option 'starttls' has unexpected length");
        co_return false;
    }
    if (!co_await send_option_reply(option, rep_ack))
        co_return false;
    auto t = crypto::tls_session::create(mgr_.tls_creds(), socket_);
    if (!t) {
        log::get("nbd")->warn("nbd {}: {}", peer_, t.error().desc);
        co_return false;
    }
    tls_ = std::move(*t);
    if (auto err = co_await tls_->handshake(); !err.empty()) {
        log::get("nbd")->info("nbd {}: {}", peer_, err);
        co_return false;
    }
    if (const auto& authz_id = mgr_.tls_authz()) {
        const char* kind = mgr_.tls_creds()->is_x509() ? "x509" : "PSK";
        auto a = mgr_.objects() ? mgr_.objects()->find_authz(*authz_id) : nullptr;
        if (!a) {
            log::get("nbd")->warn("nbd {}: TLS {} authz check failed: no authorization object with id '{}'",
                                  peer_, kind, *authz_id);
            co_return false;
        }
        if (!a->allows(tls_->peer_identity())) {
            log::get("nbd")->info("nbd {}: TLS {} authz check for '{}' is denied", peer_, kind,
                                  tls_->peer_identity());
            co_return false;
        }
    }
    log::get("nbd")->debug("nbd {}: TLS started ({}){}{}", peer_, tls_->description(),
                           tls_->peer_identity().empty() ? "" : ", peer ", tls_->peer_identity());
    co_return true;
}

asio::awaitable<bool> connection::send_option_reply(std::uint32_t option, std::uint32_t type,
                                                    std::vector<std::byte> payload)
{
    std::vector<std::byte> out;
    encode_option_reply(out, option, type, std::uint32_t(payload.size()));
    out.insert(out.end(), payload.begin(), payload.end());
    co_return co_await send(std::move(out));
}

asio::awaitable<bool> connection::send_error(std::uint32_t option, std::uint32_t type, std::string message)
{
    log::get("nbd")->debug("nbd {}: {} refused: {}", peer_, opt_name(option), message);
    co_return co_await send_option_reply(option, type, string_payload(message));
}

std::uint16_t connection::transmission_flags(const block_export& e) const
{
    // CACHE on every export, like QEMU (nbd_export_create).
    std::uint16_t f = tflag_has_flags | tflag_send_flush | tflag_send_fua | tflag_send_cache;
    // Every connection reaches the same node on one thread, and FLUSH goes to the node, so a
    // flush on any connection covers writes completed on all of them: multi-conn is safe.
    f |= tflag_can_multi_conn;
    if (structured_)
        f |= tflag_send_df;
    if (e.writable())
        f |= tflag_send_trim | tflag_send_write_zeroes | tflag_send_fast_zero;
    else
        f |= tflag_read_only;
    return f;
}

asio::awaitable<bool> connection::handshake()
{
    {
        std::vector<std::byte> hello;
        writer(hello).u64(init_magic).u64(opts_magic).u16(flag_fixed_newstyle | flag_no_zeroes);
        if (!co_await send(std::move(hello)))
            co_return false;
    }
    std::array<std::byte, 4> cflags_raw;
    if (auto ec = co_await read_exact(asio::buffer(cflags_raw)); ec)
        co_return false;
    std::uint32_t cflags = load_be32(cflags_raw.data());
    if (cflags & ~(flag_c_fixed_newstyle | flag_c_no_zeroes)) {
        log::get("nbd")->info("nbd {}: unknown client flags {:#x}, disconnecting", peer_, cflags);
        co_return false;
    }
    no_zeroes_ = cflags & flag_c_no_zeroes;

    for (;;) {
        std::array<std::byte, 16> hdr;
        if (auto ec = co_await read_exact(asio::buffer(hdr)); ec)
            co_return false;
        if (load_be64(hdr.data()) != opts_magic) {
            log::get("nbd")->info("nbd {}: bad option magic, disconnecting", peer_);
            co_return false;
        }
        std::uint32_t option = load_be32(hdr.data() + 8);
        std::uint32_t length = load_be32(hdr.data() + 12);
        if (length > max_option_length) {
            log::get("nbd")->info("nbd {}: {} with {} bytes of data is too large, disconnecting",
                                  peer_, opt_name(option), length);
            co_return false;
        }
        std::vector<std::byte> data(length);
        if (auto ec = co_await read_exact(asio::buffer(data)); ec)
            co_return false;
        int r = 1;
        if (mgr_.tls_creds() && !tls_) {
            if (option == opt_starttls)
                r = co_await start_tls(option, length) ? 1 : 0;
            else
                r = co_await refuse_before_tls(option);
        } else {
            r = co_await handle_option(option, std::move(data));
        }
        if (r == 0)
            co_return false;
        if (r == 2)
            co_return true;
    }
}

asio::awaitable<int> connection::handle_option(std::uint32_t option, std::vector<std::byte> data)
{
    switch (option) {
    case opt_export_name: {
        std::string name(reinterpret_cast<const char*>(data.data()), data.size());
        auto e = mgr_.find_by_name(name);
        if (!e) {
            // The protocol has no way to refuse EXPORT_NAME but closing the connection.
            log::get("nbd")->info("nbd {}: export '{}' not present, disconnecting", peer_, name);
            co_return 0;
        }
        exp_ = std::move(e);
        std::vector<std::byte> out;
        writer w(out);
        w.u64(exp_->node() ? exp_->node()->size() : 0).u16(transmission_flags(*exp_));
        if (!no_zeroes_)
            w.zeroes(124);
        co_return co_await send(std::move(out)) ? 2 : 0;
    }
    case opt_abort:
        co_await send_option_reply(option, rep_ack);
        co_return 0;
    case opt_list: {
        if (!data.empty())
            co_return co_await send_error(option, rep_err_invalid, "NBD_OPT_LIST must not have data") ? 1 : 0;
        for (auto& e : mgr_.listable()) {
            std::vector<std::byte> p;
            writer(p).u32(std::uint32_t(e->name().size())).bytes(e->name())
                .bytes(e->options().description.value_or(""));
            if (!co_await send_option_reply(option, rep_server, std::move(p)))
                co_return 0;
        }
        co_return co_await send_option_reply(option, rep_ack) ? 1 : 0;
    }
    case opt_starttls:
        // QEMU's texts: a second STARTTLS, or one to a server without tls-creds.
        if (tls_)
            co_return co_await send_error(option, rep_err_invalid, "TLS already enabled") ? 1 : 0;
        co_return co_await send_error(option, rep_err_policy, "TLS not configured") ? 1 : 0;
    case opt_info:
    case opt_go:
        co_return co_await handle_info_go(option, data);
    case opt_structured_reply:
        if (!data.empty())
            co_return co_await send_error(option, rep_err_invalid, "NBD_OPT_STRUCTURED_REPLY must not have data") ? 1 : 0;
        if (structured_)
            co_return co_await send_error(option, rep_err_invalid, "structured reply already negotiated") ? 1 : 0;
        structured_ = true;
        co_return co_await send_option_reply(option, rep_ack) ? 1 : 0;
    case opt_list_meta_context:
    case opt_set_meta_context:
        co_return co_await handle_meta_context(option, data);
    default:
        co_return co_await send_error(option, rep_err_unsup,
                                      "option " + std::to_string(option) + " is not supported") ? 1 : 0;
    }
}

asio::awaitable<int> connection::handle_info_go(std::uint32_t option, std::span<const std::byte> data)
{
    reader r(data);
    std::uint32_t name_len = 0;
    std::string name;
    std::uint16_t nreq = 0;
    std::vector<std::uint16_t> requests;
    bool ok = r.u32(name_len) && name_len <= max_string && r.str(name_len, name) && r.u16(nreq);
    for (unsigned i = 0; ok && i < nreq; ++i) {
        std::uint16_t t = 0;
        ok = r.u16(t);
        requests.push_back(t);
    }
    if (!ok || r.remaining() != 0)
        co_return co_await send_error(option, rep_err_invalid,
                                      std::string(opt_name(option)) + " has malformed data") ? 1 : 0;

    auto e = mgr_.find_by_name(name);
    if (!e || !e->node())
        co_return co_await send_error(option, rep_err_unknown, "export '" + name + "' not present") ? 1 : 0;

    auto wants = [&](std::uint16_t t) { return std::find(requests.begin(), requests.end(), t) != requests.end(); };
    block::node& n = *e->node();
    {
        std::vector<std::byte> p;
        writer(p).u16(info_export).u64(n.size()).u16(transmission_flags(*e));
        if (!co_await send_option_reply(option, rep_info, std::move(p)))
            co_return 0;
    }
    if (wants(info_name)) {
        std::vector<std::byte> p;
        writer(p).u16(info_name).bytes(e->name());
        if (!co_await send_option_reply(option, rep_info, std::move(p)))
            co_return 0;
    }
    if (wants(info_description) && e->options().description) {
        std::vector<std::byte> p;
        writer(p).u16(info_description).bytes(*e->options().description);
        if (!co_await send_option_reply(option, rep_info, std::move(p)))
            co_return 0;
    }
    {
        // Minimum: the node's alignment when the client promised to honour block sizes,
        // else 1 (the node layer handles unaligned requests). Preferred: 4 KiB or the
        // cluster size. Maximum: our payload limit.
        std::uint32_t align = std::max<std::uint32_t>(1, n.request_alignment());
        std::uint32_t min = wants(info_block_size) ? align : 1;
        std::uint32_t pref = std::max<std::uint32_t>({4096, n.cluster_size(), align});
        std::vector<std::byte> p;
        writer(p).u16(info_block_size).u32(min).u32(pref).u32(max_payload);
        if (!co_await send_option_reply(option, rep_info, std::move(p)))
            co_return 0;
    }
    if (!co_await send_option_reply(option, rep_ack))
        co_return 0;
    if (option == opt_info)
        co_return 1;
    if (meta_export_ != name) {
        meta_allocation_ = false;
        meta_bitmaps_.clear();
    }
    exp_ = std::move(e);
    co_return 2;
}

asio::awaitable<int> connection::handle_meta_context(std::uint32_t option, std::span<const std::byte> data)
{
    reader r(data);
    std::uint32_t name_len = 0, nq = 0;
    std::string name;
    std::vector<std::string> queries;
    bool ok = r.u32(name_len) && name_len <= max_string && r.str(name_len, name) && r.u32(nq);
    for (std::uint32_t i = 0; ok && i < nq; ++i) {
        std::uint32_t ql = 0;
        std::string q;
        ok = r.u32(ql) && ql <= max_string && r.str(ql, q);
        queries.push_back(std::move(q));
    }
    if (!ok || r.remaining() != 0)
        co_return co_await send_error(option, rep_err_invalid,
                                      std::string(opt_name(option)) + " has malformed data") ? 1 : 0;
    if (option == opt_set_meta_context && !structured_)
        co_return co_await send_error(option, rep_err_invalid,
                                      "NBD_OPT_STRUCTURED_REPLY must be negotiated first") ? 1 : 0;
    auto exp = mgr_.find_by_name(name);
    if (!exp)
        co_return co_await send_error(option, rep_err_unknown, "export '" + name + "' not present") ? 1 : 0;

    // QEMU's nbd_negotiate_meta_query: "base:allocation", "qemu:dirty-bitmap:NAME"; a list
    // may also ask for "base:", "qemu:" or "qemu:dirty-bitmap:" (every context of the kind),
    // or for nothing (everything).
    const bool list = option == opt_list_meta_context;
    const auto& bitmaps = exp->bitmaps();
    bool allocation = false;
    std::vector<bool> chosen(bitmaps.size(), false);
    auto all_bitmaps = [&] { std::fill(chosen.begin(), chosen.end(), true); };
    if (list && queries.empty()) {
        allocation = true;
        all_bitmaps();
    }
    for (const auto& q : queries) {
        if (q == base_allocation || (list && q == "base:")) {
            allocation = true;
        } else if (list && (q == "qemu:" || q == dirty_bitmap_prefix)) {
            all_bitmaps();
        } else if (q.starts_with(dirty_bitmap_prefix)) {
            const std::string_view want = std::string_view(q).substr(dirty_bitmap_prefix.size());
            for (std::size_t i = 0; i < bitmaps.size(); ++i)
                if (bitmaps[i]->name() == want)
                    chosen[i] = true;
        }
    }
    if (option == opt_set_meta_context) {
        meta_allocation_ = allocation;
        meta_bitmaps_.clear();
        for (std::size_t i = 0; i < chosen.size(); ++i)
            if (chosen[i])
                meta_bitmaps_.push_back(i);
        meta_export_ = name;
    }
    if (allocation) {
        std::vector<std::byte> p;
        writer(p).u32(base_allocation_id).bytes(base_allocation);
        if (!co_await send_option_reply(option, rep_meta_context, std::move(p)))
            co_return 0;
    }
    for (std::size_t i = 0; i < chosen.size(); ++i) {
        if (!chosen[i])
            continue;
        std::vector<std::byte> p;
        writer(p).u32(first_bitmap_id + std::uint32_t(i)).bytes(std::string(dirty_bitmap_prefix) + bitmaps[i]->name());
        if (!co_await send_option_reply(option, rep_meta_context, std::move(p)))
            co_return 0;
    }
    co_return co_await send_option_reply(option, rep_ack) ? 1 : 0;
}

} // namespace bjd::exports::detail
