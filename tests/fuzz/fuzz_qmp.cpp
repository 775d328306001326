// SPDX-License-Identifier: MIT
// Fuzz target: what a QMP client sends. The input is a byte stream (any number of messages,
// fed in two chunks split where the first byte says) through the JSON streamer, then each
// message through the real dispatcher with a table of every schema command whose handler only
// decodes its arguments with the generated decoder (no side effects). Decoded arguments are
// encoded back and decoded again: the result must be the same value. Responses and parsed
// values are rendered with the QEMU-style writer.
#include "fuzz_util.hpp"

#include "bjd/qapi/codec.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qapi/event_sink.hpp"
#include "bjd/qmp/context.hpp"
#include "bjd/qmp/dispatch.hpp"
#include "bjd/qmp/json.hpp"
#include "bjd/qmp/session.hpp"

#include <concepts>
#include <vector>

namespace {

using namespace bjd;
namespace json = boost::json;
using json_result = qapi::result<json::value>;

struct null_sink : qapi::event_sink {
    void emit(std::string_view, json::object) override {}
};

boost::asio::awaitable<json_result> caps(qmp::context& ctx, const json::object& args)
{
    if (ctx.current->state().command_mode)
        co_return qapi::error{qapi::error_class::command_not_found,
                              "Capabilities negotiation is already complete, command ignored", {}};
    auto a = qapi::decode<qapi::qmp_capabilities_args>(json::value(args));
    if (!a)
        co_return a.error();
    ctx.current->state().command_mode = true;
    co_return json::value(json::object{});
}

template <class T>
boost::asio::awaitable<json_result> decode_only(qmp::context&, const json::object& args)
{
    auto a = qapi::decode<T>(json::value(args));
    if (!a) {
        if (a.error().desc.empty())
            std::abort();   // every decode error names what is wrong
        co_return a.error();
    }
    json::value enc = qapi::to_json(*a);
    auto again = qapi::decode<T>(enc);
    if (!again)
        std::abort();   // what we encode, we must accept
    if constexpr (std::equality_comparable<T>) {
        if (!(*again == *a))
            std::abort();
    }
    co_return enc;
}

boost::asio::awaitable<json_result> no_args(qmp::context&, const json::object& args)
{
    qapi::detail::input in;
    if (!in.check_unexpected(args, {}))
        co_return in.take_error();
    co_return json::value(json::object{});
}

const std::vector<qapi::command_def>& table()
{
    static const std::vector<qapi::command_def> t = [] {
        std::vector<qapi::command_def> v;
#define BJD_FUZZ_DECODER(name, type)                                                                 \
    if (std::string_view(name) != "qmp_capabilities")                                                \
        v.push_back({name, false, &decode_only<qapi::type>});
#define BJD_FUZZ_NO_ARGS(name) v.push_back({name, false, &no_args});
#include "fuzz_decoders.inc"
#undef BJD_FUZZ_DECODER
#undef BJD_FUZZ_NO_ARGS
        v.push_back({"qmp_capabilities", false, &caps});
        v.push_back({"x-oob-echo", true, &decode_only<qapi::qmp_capabilities_args>});
        return v;
    }();
    return t;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size > (64u << 10))
        return 0;
    fuzz::quiet_logs();
    std::string_view text(reinterpret_cast<const char*>(data), size);
    // A leading space keeps the session in negotiation mode; otherwise it is past it.
    const bool negotiate = !text.empty() && text[0] == ' ';
    const std::size_t split = text.empty() ? 0 : std::uint8_t(text[0]) % (text.size() + 1);

    std::vector<qmp::json_message> msgs;
    qmp::json_streamer js;
    js.feed(text.substr(0, split), msgs);
    js.feed(text.substr(split), msgs);
    js.flush(msgs);

    boost::asio::io_context io;
    null_sink sink;
    qmp::context ctx{io, sink};
    qmp::dispatcher d{table()};
    qmp::session s;
    s.state().command_mode = !negotiate;
    s.state().oob_enabled = size % 2;
    for (qmp::json_message& m : msgs) {
        if (m.ok() == !m.error.empty())
            std::abort();   // exactly one of value and error
        if (m.ok()) {
            (void)qmp::to_json_text(*m.value);
            (void)qmp::to_json_text(*m.value, {.pretty = true, .order = qmp::json_order::insertion});
        }
        json::object resp = fuzz::run(io, d.handle(ctx, s, std::move(m)));
        (void)qmp::to_wire_message(resp);
    }
    return 0;
}
