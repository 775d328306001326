// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The daemon's character devices: ring buffers (created by --chardev ringbuf,… or
/// chardev-add) and, for query-chardev, the socket chardevs of the command line that serve
/// QMP monitors. Errors carry QEMU 7.2's texts (QEMU's chardev/char-ringbuf.c). Lives on the main loop.
#include "bjd/chardev/ringbuf.hpp"
#include "bjd/qapi/error.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::chardev {

/// One row of query-chardev.
struct info {
    std::string label;
    std::string filename;     ///< "ringbuf", "memory", "unix:PATH,server=on", …
    bool frontend_open = false;
};

inline constexpr std::int64_t default_ringbuf_size = 65536;

class registry {
public:
    /// Adds a ring buffer; `memory` selects the alias type name (filename "memory").
    /// Errors: "Chardev with id 'X' already exists", "Failed to add chardev 'X': size of
    /// ringbuf chardev must be power of two" (also for 0 and negative sizes).
    qapi::result<void> add_ringbuf(const std::string& id, std::int64_t size, bool memory = false);
    /// Records a socket chardev that a monitor uses (shown by query-chardev, not removable).
    /// Error: "Chardev with id 'X' already exists".
    qapi::result<void> add_socket(const std::string& id, std::string filename);
    /// chardev-remove: "Chardev 'X' not found", "Chardev 'X' is busy" (monitor sockets).
    qapi::result<void> remove(std::string_view id);
    bool contains(std::string_view id) const { return entries_.find(id) != entries_.end(); }

    /// The ring buffer named `device`: "Device 'X' not found", "X is not a ringbuf device".
    qapi::result<ringbuf*> find_ringbuf(std::string_view device);

    /// query-chardev: every chardev, sorted by label.
    std::vector<info> query() const;

private:
    struct entry {
        info meta;
        std::unique_ptr<ringbuf> buf;   ///< null for sockets
    };
    std::map<std::string, entry, std::less<>> entries_;
};

} // namespace bjd::chardev
