// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// One entry of the generated command table (see schemas/README.md).
#include "bjd/qapi/error.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <span>
#include <string_view>

namespace bjd::qmp { class context; }

namespace bjd::qapi {

/// Decodes `args` (errors per QEMU's qapi/qobject-input-visitor.c, before any side effect), runs the handler and encodes
/// its return value (`{}` for commands without one). Runs on the main loop.
using command_fn = boost::asio::awaitable<result<boost::json::value>> (*)(qmp::context& ctx,
                                                                          const boost::json::object& args);

struct command_def {
    std::string_view name;   ///< wire name, e.g. "blockdev-add"
    bool allow_oob = false;
    command_fn fn = nullptr;
};

/// Every command in the schema, generated. Defined in the generated commands.cpp.
std::span<const command_def> command_table();

} // namespace bjd::qapi
