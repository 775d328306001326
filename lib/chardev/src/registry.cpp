// SPDX-License-Identifier: MIT
// The chardev registry: ring buffers and the monitor sockets, with QEMU's error texts.
#include "bjd/chardev/registry.hpp"

#include "bjd/log.hpp"

namespace bjd::chardev {

qapi::result<void> registry::add_ringbuf(const std::string& id, std::int64_t size, bool memory)
{
    if (contains(id))
        return qapi::generic("Chardev with id '" + id + "' already exists");
    // QEMU 7.2 accepts 0 and crashes on the first write; we reject it with the same text.
    if (!is_power_of_two(size))
        return qapi::generic("Failed to add chardev '" + id + "': size of ringbuf chardev must be power of two");
    entry e;
    e.meta = {id, memory ? "memory" : "ringbuf", false};
    e.buf = std::make_unique<ringbuf>(static_cast<std::size_t>(size));
    entries_.emplace(id, std::move(e));
    log::get("chardev")->info("ring buffer '{}' of {} bytes", id, size);
    return {};
}

qapi::result<void> registry::add_socket(const std::string& id, std::string filename)
{
    if (contains(id))
        return qapi::generic("Chardev with id '" + id + "' already exists");
    entry e;
    e.meta = {id, std::move(filename), true};
    entries_.emplace(id, std::move(e));
    return {};
}

qapi::result<void> registry::remove(std::string_view id)
{
    auto it = entries_.find(id);
    if (it == entries_.end())
        return qapi::generic("Chardev '" + std::string(id) + "' not found");
    if (!it->second.buf)
        return qapi::generic("Chardev '" + std::string(id) + "' is busy");
    entries_.erase(it);
    return {};
}

qapi::result<ringbuf*> registry::find_ringbuf(std::string_view device)
{
    auto it = entries_.find(device);
    if (it == entries_.end())
        return qapi::generic("Device '" + std::string(device) + "' not found");
    if (!it->second.buf)
        return qapi::generic(std::string(device) + " is not a ringbuf device");
    return it->second.buf.get();
}

std::vector<info> registry::query() const
{
    std::vector<info> out;
    for (const auto& [id, e] : entries_)
        out.push_back(e.meta);
    return out;
}

} // namespace bjd::chardev
