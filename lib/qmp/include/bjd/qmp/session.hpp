// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// One QMP connection as commands see it (`context::current`): its protocol state. The server
/// derives its socket-backed sessions from this class; tests may use it directly.
#include <cstdint>

namespace bjd::qmp {

/// Per-connection protocol state (QEMU's docs/interop/qmp-spec.rst). Capabilities are per connection.
struct session_state {
    bool command_mode = false;   ///< qmp_capabilities succeeded
    bool oob_offered = true;     ///< the greeting listed "oob"
    bool oob_enabled = false;    ///< the client enabled "oob"; exec-oob is then accepted
};

class session {
public:
    explicit session(bool oob_offered = true);
    virtual ~session() = default;
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    session_state& state() noexcept { return state_; }
    const session_state& state() const noexcept { return state_; }

    /// Process-unique number, for logs.
    std::uint64_t id() const noexcept { return id_; }

private:
    session_state state_;
    std::uint64_t id_;
};

} // namespace bjd::qmp
