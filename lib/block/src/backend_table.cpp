// SPDX-License-Identifier: MIT
// The table of named drives: creation, deletion and QEMU's device lookups.
#include "bjd/block/backend.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/id.hpp"

#include "bjd/log.hpp"

#include <cctype>

namespace bjd::block {

qapi::result<std::shared_ptr<backend>> backend_table::add(const drive_options& opts)
{
    if (!id_wellformed(opts.id))
        return qapi::generic("Parameter 'id' expects an identifier");
    if (drives_.count(opts.id))
        return qapi::generic("Duplicate ID '" + opts.id + "' for drive");
    if (graph_.find(opts.id))
        return qapi::generic("Device name '" + opts.id + "' conflicts with an existing node name");
    if (opts.tray && !opts.removable)
        return qapi::generic("Drive '" + opts.id + "': tray=on requires removable=on");
    if ((opts.tray_open || opts.locked) && !opts.tray)
        return qapi::generic("Drive '" + opts.id + "': tray-open and locked require tray=on");
    for (std::uint32_t i : opts.stats_intervals)
        if (i == 0)
            return qapi::generic("Invalid interval length: 0");
    std::shared_ptr<node> n;
    if (!opts.node_name.empty()) {
        n = graph_.find(opts.node_name);
        if (!n)
            return qapi::generic("Node '" + opts.node_name + "' not found");
        if (auto r = check_free_node(*n); !r)
            return r.error();
    } else if (!opts.removable) {
        return qapi::generic("Device needs media, but drive is empty");
    }
    auto b = std::make_shared<backend>(opts);
    if (n)
        if (auto r = b->attach(std::move(n)); !r)
            return r.error();
    drives_.emplace(opts.id, b);
    log::get("block")->info("drive '{}' created{}{}", opts.id, opts.removable ? " (removable)" : "",
                            opts.node_name.empty() ? "" : ", medium '" + opts.node_name + "'");
    return b;
}

qapi::result<void> backend_table::del(std::string_view id)
{
    auto it = drives_.find(id);
    if (it == drives_.end())
        return qapi::error{qapi::error_class::device_not_found, "Device '" + std::string(id) + "' not found", {}};
    if (it->second->in_use())
        return qapi::generic("Drive '" + std::string(id) + "' is in use by an export");
    if (node* m = it->second->medium())
        if (auto r = m->check_op(block_op::other, id); !r)
            return r;
    drives_.erase(it);
    log::get("block")->info("drive '{}' deleted", id);
    return {};
}

std::shared_ptr<backend> backend_table::find(std::string_view name) const
{
    auto it = drives_.find(name);
    return it == drives_.end() ? nullptr : it->second;
}

qapi::result<std::shared_ptr<backend>> backend_table::get(const std::optional<std::string>& device,
                                                          const std::optional<std::string>& id) const
{
    if (bool(device) == bool(id))
        return qapi::generic("Need exactly one of 'device' and 'id'");
    const std::string& name = device ? *device : *id;
    if (auto b = find(name))
        return b;
    return qapi::error{qapi::error_class::device_not_found, "Device '" + name + "' not found", {}};
}

std::vector<std::shared_ptr<backend>> backend_table::all() const
{
    std::vector<std::shared_ptr<backend>> out;
    for (const auto& [name, b] : drives_)
        out.push_back(b);
    return out;
}

} // namespace bjd::block
