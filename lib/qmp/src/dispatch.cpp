// SPDX-License-Identifier: MIT
/// \file
/// QMP request validation and dispatch (QEMU's docs/interop/qmp-spec.rst).
#include "bjd/qmp/dispatch.hpp"

#include "bjd/block/graph.hpp"
#include "bjd/log.hpp"
#include "bjd/qmp/context.hpp"
#include "bjd/qmp/session.hpp"

#include <boost/json/string.hpp>

#include <exception>
#include <vector>

namespace bjd::qmp {
namespace {

namespace json = boost::json;

constexpr std::string_view negotiation_desc = "Expecting capabilities negotiation with 'qmp_capabilities'";

qapi::error generic(std::string desc) { return qapi::generic(std::move(desc)); }

/// Checks the request's members in QDict iteration order (QEMU's qmp_dispatch_check_obj) and
/// finds the command name. Returns an error on the first bad member.
std::optional<qapi::error> check_request(const json::object& req, bool oob_enabled, std::string_view& name,
                                         bool& is_oob)
{
    std::vector<std::string_view> keys;
    keys.reserve(req.size());
    for (const auto& kv : req) {
        keys.push_back(kv.key());
    }
    bool has_exec = false;
    for (std::size_t i : qdict_order(keys)) {
        const auto& kv = *(req.begin() + static_cast<std::ptrdiff_t>(i));
        const std::string_view key = kv.key();
        if (key == "execute" || (key == "exec-oob" && oob_enabled)) {
            if (!kv.value().is_string()) {
                return generic("QMP input member '" + std::string(key) + "' must be a string");
            }
            if (has_exec) {
                std::string other = key == "execute" ? "exec-oob" : "execute";
                return generic("QMP input member '" + std::string(key) + "' clashes with '" + other + "'");
            }
            has_exec = true;
            name = kv.value().get_string();
            is_oob = key == "exec-oob";
        } else if (key == "arguments") {
            if (!kv.value().is_object()) {
                return generic("QMP input member 'arguments' must be an object");
            }
        } else if (key != "id") {
            return generic("QMP input member '" + std::string(key) + "' is unexpected");
        }
    }
    if (!has_exec) {
        return generic("QMP input lacks member 'execute'");
    }
    return std::nullopt;
}

} // namespace

json::object error_response(const qapi::error& e, const json::value* id)
{
    json::object rsp;
    rsp["error"] = json::object{{"class", qapi::to_string(e.cls)}, {"desc", e.desc}};
    if (id) {
        rsp["id"] = *id;
    }
    return rsp;
}

const qapi::command_def* dispatcher::find(std::string_view name) const noexcept
{
    for (const qapi::command_def& c : table_) {
        if (c.name == name) {
            return &c;
        }
    }
    return nullptr;
}

boost::asio::awaitable<json::object> dispatcher::handle(context& ctx, session& s, json_message msg) const
{
    if (!msg.ok()) {
        co_return error_response(generic(std::move(msg.error)));
    }
    if (!msg.value->is_object()) {
        co_return error_response(generic("QMP input must be a JSON object"));
    }
    const json::object& req = msg.value->get_object();
    const json::value* id = req.if_contains("id");
    session_state& st = s.state();

    std::string_view name;
    bool is_oob = false;
    if (auto err = check_request(req, st.oob_enabled, name, is_oob)) {
        co_return error_response(*err, id);
    }

    // Negotiation mode knows only qmp_capabilities; its CommandNotFound text is replaced.
    const qapi::command_def* cmd = nullptr;
    if (st.command_mode || name == "qmp_capabilities") {
        cmd = find(name);
    }
    if (!cmd) {
        std::string desc = st.command_mode ? "The command " + std::string(name) + " has not been found"
                                           : std::string(negotiation_desc);
        co_return error_response({qapi::error_class::command_not_found, std::move(desc), {}}, id);
    }
    if (is_oob && !cmd->allow_oob) {
        co_return error_response(generic("The command " + std::string(name) + " does not support OOB"), id);
    }

    static const json::object no_args;
    const json::value* args = req.if_contains("arguments");
    const json::object& args_obj = args ? args->get_object() : no_args;

    qapi::result<json::value> r = generic("internal error");
    ctx.current = &s;
    try {
        // Nodes a job let go are flushed before they release their children and image locks
        // (graph.hpp, "Closing"); QEMU does that before its events go out, so commands here
        // see the graph only once it has.
        if (ctx.graph)
            co_await ctx.graph->wait_for_closes();
        r = co_await cmd->fn(ctx, args_obj);
    } catch (const std::exception& e) {
        log::get("qmp")->error("command {} threw: {}", name, e.what());
        r = generic(e.what());
    }
    ctx.current = nullptr;

    if (!r) {
        qapi::error e = r.error();
        if (!e.hint.empty()) {
            log::get("qmp")->info("{}: {} ({})", name, e.desc, e.hint);
        }
        if (!st.command_mode && e.cls == qapi::error_class::command_not_found) {
            e.desc = negotiation_desc;
        }
        co_return error_response(e, id);
    }
    json::object rsp;
    rsp["return"] = std::move(*r);
    if (id) {
        rsp["id"] = *id;
    }
    co_return rsp;
}

} // namespace bjd::qmp
