// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Where generated `emit_*` functions send QMP events.
#include <boost/json/object.hpp>

#include <string_view>

namespace bjd::qapi {

/// Receives events. The QMP server implements it by adding a timestamp and broadcasting to
/// every session in command mode; tests implement it by recording.
/// Called on the main loop only.
class event_sink {
public:
    virtual ~event_sink() = default;
    /// `data` empty means the event has no payload: the wire message then has no "data".
    virtual void emit(std::string_view event, boost::json::object data) = 0;
};

} // namespace bjd::qapi
