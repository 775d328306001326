// SPDX-License-Identifier: MIT
// Request validation order, negotiation and id echo (QEMU's docs/interop/qmp-spec.rst) with a fake table.
#include "bjd/qmp/dispatch.hpp"

#include "bjd/qmp/context.hpp"
#include "bjd/qmp/session.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <stdexcept>
#include <vector>

namespace json = boost::json;
namespace qapi = bjd::qapi;
namespace qmp = bjd::qmp;

namespace {

struct null_sink : qapi::event_sink {
    void emit(std::string_view, json::object) override {}
};

qmp::session* seen_current = nullptr;

boost::asio::awaitable<qapi::result<json::value>> fake_caps(qmp::context& ctx, const json::object& args)
{
    if (ctx.current->state().command_mode) {
        co_return qapi::error{qapi::error_class::command_not_found,
                              "Capabilities negotiation is already complete, command ignored", {}};
    }
    ctx.current->state().command_mode = true;
    co_return json::value(json::object{});
}

boost::asio::awaitable<qapi::result<json::value>> fake_echo(qmp::context& ctx, const json::object& args)
{
    seen_current = ctx.current;
    co_return json::value(args);
}

boost::asio::awaitable<qapi::result<json::value>> fake_fail(qmp::context&, const json::object&)
{
    co_return qapi::error{qapi::error_class::device_not_active, "Block job 'x' not found", "a hint"};
}

boost::asio::awaitable<qapi::result<json::value>> fake_throw(qmp::context&, const json::object&)
{
    throw std::runtime_error("boom");
    co_return json::value(nullptr);
}

const qapi::command_def fake_table[] = {
    {"qmp_capabilities", false, &fake_caps},
    {"echo", false, &fake_echo},
    {"oob-echo", true, &fake_echo},
    {"fail", false, &fake_fail},
    {"throw", false, &fake_throw},
};

struct fixture {
    boost::asio::io_context loop;
    null_sink sink;
    qmp::context ctx{loop, sink};
    qmp::dispatcher d{fake_table};
    qmp::session s;

    /// Feeds `text` and returns each response rendered as qemu would send it.
    std::vector<std::string> send(std::string_view text)
    {
        std::vector<std::string> out;
        for (qmp::json_message& m : qmp::json_streamer().feed(text)) {
            auto f = boost::asio::co_spawn(loop, d.handle(ctx, s, std::move(m)), boost::asio::use_future);
            loop.restart();
            loop.run();
            out.push_back(qmp::to_json_text(f.get()));
        }
        return out;
    }
    std::string one(std::string_view text)
    {
        auto r = send(text);
        REQUIRE(r.size() == 1);
        return r[0];
    }
    void negotiate() { REQUIRE(one(R"({"execute":"qmp_capabilities"})") == R"({"return": {}})"); }
};

std::string err(std::string_view cls, std::string_view desc, std::string_view id = {})
{
    std::string e = R"({"class": ")" + std::string(cls) + R"(", "desc": ")" + std::string(desc) + R"("})";
    return id.empty() ? R"({"error": )" + e + "}" : R"({"id": )" + std::string(id) + R"(, "error": )" + e + "}";
}

} // namespace

TEST_CASE("dispatch: negotiation mode", "[dispatch]")
{
    fixture f;
    const auto neg = "Expecting capabilities negotiation with 'qmp_capabilities'";
    CHECK(f.one(R"({"execute":"echo","id":1})") == err("CommandNotFound", neg, "1"));
    CHECK(f.one(R"({"execute":"nosuch","id":"x"})") == err("CommandNotFound", neg, "\"x\""));
    // exec-oob is simply an unexpected member before OOB is negotiated.
    CHECK(f.one(R"({"exec-oob":"qmp_capabilities","id":1})") ==
          err("GenericError", "QMP input member 'exec-oob' is unexpected", "1"));
    f.negotiate();
    CHECK(f.s.state().command_mode);
    CHECK(f.one(R"({"execute":"qmp_capabilities","id":2})") ==
          err("CommandNotFound", "Capabilities negotiation is already complete, command ignored", "2"));
    CHECK(f.one(R"({"execute":"nosuch","id":3})") == err("CommandNotFound", "The command nosuch has not been found", "3"));
}

TEST_CASE("dispatch: validation order and texts", "[dispatch]")
{
    fixture f;
    f.negotiate();
    // 1: parse errors, 2: non-objects — never an id.
    CHECK(f.one(R"({"execute": })") == err("GenericError", "JSON parse error, expecting value"));
    CHECK(f.one("\xFF") == err("GenericError", "JSON parse error, stray '\\uFFFD'"));
    CHECK(f.one("[1] ") == err("GenericError", "QMP input must be a JSON object"));
    CHECK(f.one("\"x\" ") == err("GenericError", "QMP input must be a JSON object"));
    CHECK(f.one("null ") == err("GenericError", "QMP input must be a JSON object"));
    // 3: members, checked in QDict order ("execute" iterates before "foo").
    CHECK(f.one(R"({"foo":1,"execute":1,"id":1})") == err("GenericError", "QMP input member 'execute' must be a string", "1"));
    CHECK(f.one(R"({"execute":"x","foo":1,"id":1})") == err("GenericError", "QMP input member 'foo' is unexpected", "1"));
    CHECK(f.one(R"({"arguments":1,"foo":1,"id":1})") == err("GenericError", "QMP input member 'arguments' must be an object", "1"));
    CHECK(f.one(R"({"arguments":null,"execute":"echo"})") == err("GenericError", "QMP input member 'arguments' must be an object"));
    // 4: no execute.
    CHECK(f.one(R"({"id":1})") == err("GenericError", "QMP input lacks member 'execute'", "1"));
    CHECK(f.one(R"({"arguments":{}})") == err("GenericError", "QMP input lacks member 'execute'"));
    // 5: unknown command.
    CHECK(f.one(R"({"execute":"nosuch"})") == err("CommandNotFound", "The command nosuch has not been found"));
    // 7: exec-oob without OOB negotiated is an unexpected member (checked at 3).
    CHECK(f.one(R"({"exec-oob":"oob-echo","id":1})") == err("GenericError", "QMP input member 'exec-oob' is unexpected", "1"));
    // 9: the command's own error, with its class; hints are not sent.
    CHECK(f.one(R"({"execute":"fail","id":7})") == err("DeviceNotActive", "Block job 'x' not found", "7"));
    CHECK(f.one(R"({"execute":"throw"})") == err("GenericError", "boom"));
}

TEST_CASE("dispatch: id echo and arguments", "[dispatch]")
{
    fixture f;
    f.negotiate();
    CHECK(f.one(R"({"execute":"echo","arguments":{"a":[1,{"b":null}]},"id":{"k":[1,2]}})") ==
          R"({"return": {"a": [1, {"b": null}]}, "id": {"k": [1, 2]}})");
    CHECK(f.one(R"({"execute":"echo","id":null})") == R"({"return": {}, "id": null})");
    CHECK(f.one(R"({"execute":"echo"})") == R"({"return": {}})");
    CHECK(f.one(R"({'execute':'echo','id':'\u00e9'})") == R"({"return": {}, "id": "\u00E9"})");
    CHECK(seen_current == &f.s);
    CHECK(f.ctx.current == nullptr);
}

TEST_CASE("dispatch: OOB negotiated", "[dispatch]")
{
    fixture f;
    f.negotiate();
    f.s.state().oob_enabled = true;
    CHECK(f.one(R"({"exec-oob":"echo","execute":"echo","id":1})") ==
          err("GenericError", "QMP input member 'execute' clashes with 'exec-oob'", "1"));
    CHECK(f.one(R"({"execute":"echo","exec-oob":"echo","id":2})") ==
          err("GenericError", "QMP input member 'execute' clashes with 'exec-oob'", "2"));
    CHECK(f.one(R"({"exec-oob":1,"id":3})") == err("GenericError", "QMP input member 'exec-oob' must be a string", "3"));
    CHECK(f.one(R"({"exec-oob":"echo","id":4})") == err("GenericError", "The command echo does not support OOB", "4"));
    CHECK(f.one(R"({"exec-oob":"nosuch","id":5})") == err("CommandNotFound", "The command nosuch has not been found", "5"));
    CHECK(f.one(R"({"exec-oob":"oob-echo","id":6})") == R"({"return": {}, "id": 6})");
}
