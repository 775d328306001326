// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Turns framed QMP input into responses: request validation in QEMU 7.2's order (QEMU's docs/interop/qmp-spec.rst),
/// negotiation mode, id echo, and dispatch through a command table. Independent of
/// sockets so that tests can drive it with a fake table.
#include "bjd/qapi/command.hpp"
#include "bjd/qapi/error.hpp"
#include "bjd/qmp/json.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <span>
#include <string_view>

namespace bjd::qmp {

class context;
class session;

/// `{"error": {"class", "desc"}}` plus `"id"` when `id` is non-null.
boost::json::object error_response(const qapi::error& e, const boost::json::value* id = nullptr);

class dispatcher {
public:
    /// `table` must outlive the dispatcher (the generated one is static).
    explicit dispatcher(std::span<const qapi::command_def> table) noexcept : table_(table) {}

    /// The response to one message from `s`: parse errors and non-objects answer without id;
    /// everything later echoes the request's id verbatim. In negotiation mode only
    /// qmp_capabilities runs; every CommandNotFound then reads "Expecting capabilities
    /// negotiation with 'qmp_capabilities'". While the command runs, `ctx.current` is `&s`
    /// (reliable until the handler first suspends: sessions run commands concurrently).
    /// A handler that throws answers GenericError with the exception text (and is logged).
    boost::asio::awaitable<boost::json::object> handle(context& ctx, session& s, json_message msg) const;

    /// The table entry named `name`, or null.
    const qapi::command_def* find(std::string_view name) const noexcept;

    std::span<const qapi::command_def> table() const noexcept { return table_; }

private:
    std::span<const qapi::command_def> table_;
};

} // namespace bjd::qmp
