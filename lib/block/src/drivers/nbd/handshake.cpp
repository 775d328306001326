// SPDX-License-Identifier: MIT
// NBD client handshake, fixed newstyle (doc/proto.md of NetworkBlockDevice/nbd):
// NBD_OPT_STARTTLS and the TLS handshake when the node has tls-creds, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT base:allocation, then NBD_OPT_GO
// asking for NBD_INFO_BLOCK_SIZE (NBD_OPT_EXPORT_NAME when the server lacks GO).
#include "session.hpp"

#include "bjd/log.hpp"

#include <fmt/format.h>

namespace bjd::block::nbd_client {

using namespace bjd::nbd;

namespace {

struct option_answer {
    option_reply head;
    std::vector<std::byte> payload;
    std::string error;   ///< stream broken or malformed
};

asio::awaitable<std::string> send_option(stream& s, std::uint32_t option, const std::vector<std::byte>& payload)
{
    std::vector<std::byte> out;
    encode_option(out, option, std::uint32_t(payload.size()));
    out.insert(out.end(), payload.begin(), payload.end());
    asio::const_buffer b(out.data(), out.size());
    if (auto ec = co_await s.write(std::span(&b, 1)))
        co_return "Failed to send option to the server: " + ec.message();
    co_return std::string{};
}

asio::awaitable<option_answer> read_answer(stream& s, std::uint32_t option)
{
    option_answer a;
    std::array<std::byte, option_reply_size> h;
    if (auto ec = co_await s.read(asio::buffer(h))) {
        a.error = "Failed to read option reply: " + ec.message();
        co_return a;
    }
    if (!decode_option_reply(h, a.head) || a.head.option != option) {
        a.error = "Unexpected option reply from the server";
        co_return a;
    }
    if (a.head.length > max_option_length) {
        a.error = fmt::format("Server sent an oversized reply to {}", opt_name(option));
        co_return a;
    }
    a.payload.resize(a.head.length);
    if (a.head.length)
        if (auto ec = co_await s.read(asio::buffer(a.payload))) {
            a.error = "Failed to read option reply: " + ec.message();
            co_return a;
        }
    co_return a;
}

/// The option names QEMU's messages use (nbd/common.c, nbd_opt_lookup).
const char* qemu_opt_name(std::uint32_t option)
{
    switch (option) {
    case opt_export_name: return "export name";
    case opt_abort: return "abort";
    case opt_list: return "list";
    case opt_starttls: return "starttls";
    case opt_info: return "info";
    case opt_go: return "go";
    case opt_structured_reply: return "structured reply";
    case opt_list_meta_context: return "list meta context";
    case opt_set_meta_context: return "set meta context";
    default: return "<unknown>";
    }
}

/// QEMU's words for an option the server refused (nbd/client.c, nbd_handle_reply_err).
std::string refusal(std::uint32_t option, const option_answer& a)
{
    std::string msg(reinterpret_cast<const char*>(a.payload.data()), a.payload.size());
    const char* name = qemu_opt_name(option);
    switch (a.head.type) {
    case rep_err_unknown: return "Requested export not available";
    case rep_err_tls_reqd: return fmt::format("TLS negotiation required before option {} ({})", option, name);
    case rep_err_policy: return fmt::format("Denied by server for option {} ({})", option, name);
    case rep_err_shutdown: return fmt::format("Server shutting down before option {} ({})", option, name);
    default:
        return fmt::format("Server refused option {} ({}) with {}{}{}", option, name, rep_name(a.head.type),
                           msg.empty() ? "" : ": ", msg);
    }
}

std::vector<std::byte> name_payload(const std::string& name)
{
    std::vector<std::byte> p;
    writer(p).u32(std::uint32_t(name.size())).bytes(name);
    return p;
}

} // namespace

asio::awaitable<handshake_result> handshake(std::unique_ptr<stream>& sp, const std::string& export_name,
                                            std::shared_ptr<const crypto::tls_creds> tls_creds,
                                            const std::string& tls_hostname, const std::string& meta_context)
{
    const std::string_view context = meta_context.empty() ? base_allocation : std::string_view(meta_context);
    handshake_result r;
    auto& info = r.info;
    auto fail = [&](std::string e) {
        r.error = std::move(e);
        return r;
    };
    std::array<std::byte, 18> hello;
    if (auto ec = co_await sp->read(asio::buffer(hello)))
        co_return fail("Failed to read initial magic: " + ec.message());
    if (load_be64(hello.data()) != init_magic)
        co_return fail("Invalid initial magic");
    if (load_be64(hello.data() + 8) != opts_magic)
        co_return fail("Server does not speak the newstyle protocol");
    const std::uint16_t sflags = load_be16(hello.data() + 16);
    if (!(sflags & flag_fixed_newstyle))
        co_return fail(tls_creds ? "Server does not support STARTTLS" : "Server does not support the fixed newstyle protocol");
    const bool no_zeroes = sflags & flag_no_zeroes;
    {
        std::vector<std::byte> cf;
        writer(cf).u32(flag_c_fixed_newstyle | (no_zeroes ? flag_c_no_zeroes : 0));
        asio::const_buffer b(cf.data(), cf.size());
        if (auto ec = co_await sp->write(std::span(&b, 1)))
            co_return fail("Failed to send client flags: " + ec.message());
    }

    // TLS before anything else (QEMU's nbd_receive_starttls): the server must acknowledge.
    if (tls_creds) {
        if (auto e = co_await send_option(*sp, opt_starttls, {}); !e.empty())
            co_return fail(e);
        auto a = co_await read_answer(*sp, opt_starttls);
        if (!a.error.empty())
            co_return fail(a.error);
        if (is_rep_error(a.head.type)) {
            (void)co_await send_option(*sp, opt_abort, {});   // as QEMU does, best effort
            co_return fail(a.head.type == rep_err_unsup ? "Server don't support STARTTLS option"
                                                        : refusal(opt_starttls, a));
        }
        if (a.head.type != rep_ack || a.head.length != 0)
            co_return fail("Server sent an unexpected reply to the starttls option");
        if (auto e = co_await start_tls(sp, std::move(tls_creds), tls_hostname); !e.empty())
            co_return fail(e);
    }
    stream& s = *sp;

    // Structured replies: holes in READ replies, and what BLOCK_STATUS needs.
    if (auto e = co_await send_option(s, opt_structured_reply, {}); !e.empty())
        co_return fail(e);
    {
        auto a = co_await read_answer(s, opt_structured_reply);
        if (!a.error.empty())
            co_return fail(a.error);
        info.structured = a.head.type == rep_ack;
        if (!info.structured && !is_rep_error(a.head.type))
            co_return fail("Unexpected reply to NBD_OPT_STRUCTURED_REPLY");
        // Any refusal just means simple replies (QEMU asks non-strictly); a TLS-only server
        // refuses NBD_OPT_GO next, and that error is the one reported.
    }
    if (info.structured) {
        auto p = name_payload(export_name);
        writer(p).u32(1).u32(std::uint32_t(context.size())).bytes(context);
        if (auto e = co_await send_option(s, opt_set_meta_context, p); !e.empty())
            co_return fail(e);
        for (;;) {
            auto a = co_await read_answer(s, opt_set_meta_context);
            if (!a.error.empty())
                co_return fail(a.error);
            if (a.head.type == rep_ack || is_rep_error(a.head.type))
                break;   // an export the server does not have shows in GO's answer
            if (a.head.type == rep_meta_context && a.payload.size() >= 4) {
                std::string name(reinterpret_cast<const char*>(a.payload.data()) + 4, a.payload.size() - 4);
                if (name == context) {
                    info.allocation = true;
                    info.allocation_depth = name == "qemu:allocation-depth";
                    info.allocation_id = load_be32(a.payload.data());
                }
            }
        }
    }

    auto go = name_payload(export_name);
    writer(go).u16(1).u16(info_block_size);
    if (auto e = co_await send_option(s, opt_go, go); !e.empty())
        co_return fail(e);
    bool have_export = false;
    for (;;) {
        auto a = co_await read_answer(s, opt_go);
        if (!a.error.empty())
            co_return fail(a.error);
        if (a.head.type == rep_ack)
            break;
        if (a.head.type == rep_err_unsup) {
            // An old server: NBD_OPT_EXPORT_NAME, which ends option haggling; a server
            // without the export just closes the connection.
            auto name = std::vector<std::byte>();
            writer(name).bytes(export_name);
            if (auto e = co_await send_option(s, opt_export_name, name); !e.empty())
                co_return fail(e);
            std::array<std::byte, 10 + 124> ex{};
            const std::size_t want = no_zeroes ? 10 : ex.size();
            if (auto ec = co_await s.read(asio::buffer(ex.data(), want)))
                co_return fail("Requested export not available");
            info.size = load_be64(ex.data());
            info.flags = load_be16(ex.data() + 8);
            have_export = true;
            // Without GO the meta context negotiated above may not apply: do without it.
            info.allocation = false;
            break;
        }
        if (is_rep_error(a.head.type))
            co_return fail(refusal(opt_go, a));
        if (a.head.type != rep_info || a.payload.size() < 2)
            continue;
        const std::byte* d = a.payload.data();
        switch (load_be16(d)) {
        case info_export:
            if (a.payload.size() >= 12) {
                info.size = load_be64(d + 2);
                info.flags = load_be16(d + 10);
                have_export = true;
            }
            break;
        case info_block_size:
            if (a.payload.size() >= 14) {
                info.min_block = load_be32(d + 2);
                info.pref_block = load_be32(d + 6);
                info.max_block = load_be32(d + 10);
            }
            break;
        default: break;
        }
    }
    if (!have_export)
        co_return fail("Server did not describe the export");
    if (!meta_context.empty() && !info.allocation) {
        // QEMU 7.2 reports only the errno of "requested x-dirty-bitmap X not found".
        log::get("block")->warn("requested x-dirty-bitmap {} not found", meta_context);
        co_return fail("Could not open image: Invalid argument");
    }
    if (!(info.flags & tflag_has_flags))
        info.flags = tflag_has_flags;   // no flags: nothing optional is supported
    // Sanity of the block sizes (powers of two, min <= pref <= max); fall back otherwise.
    auto pow2 = [](std::uint32_t v) { return v && !(v & (v - 1)); };
    if (!pow2(info.min_block) || info.min_block > 65536)
        info.min_block = info.structured ? 1 : 512;
    if (!pow2(info.pref_block) || info.pref_block < info.min_block)
        info.pref_block = std::max<std::uint32_t>(4096, info.min_block);
    if (info.max_block < info.min_block || info.max_block > max_payload)
        info.max_block = max_payload;
    info.max_block = info.max_block / info.min_block * info.min_block;
    co_return r;
}

} // namespace bjd::block::nbd_client
