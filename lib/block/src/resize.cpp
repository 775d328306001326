// SPDX-License-Identifier: MIT
// block_resize (QEMU 7.2's qmp_block_resize and bdrv_co_truncate, in their order and words).
#include "bjd/block/resize.hpp"

#include "bjd/log.hpp"

#include <limits>
#include <string>

namespace bjd::block {

asio::awaitable<qapi::result<void>> resize(graph& g, const std::optional<std::string>& device,
                                           const std::optional<std::string>& node_name, std::int64_t size)
{
    auto found = g.lookup(device, node_name);
    if (!found)
        co_return found.error();
    std::shared_ptr<node> n = *found;
    if (size < 0)
        co_return qapi::generic("Parameter 'size' expects a >0 size");
    if (!n->op_blocker(block_op::other).empty())
        co_return qapi::generic("Device '" + (device ? *device : n->name()) + "' is in use");

    edge user(parent_kind::anonymous, "block_resize", "root");
    (void)user.set_perms(perm_resize, perm_all);   // no node yet: cannot fail
    if (auto r = user.attach(n); !r)
        co_return r.error();
    // QEMU's bdrv_check_request: no node is larger than INT64_MAX rounded down to 1 GiB.
    constexpr std::int64_t max_length = std::numeric_limits<std::int64_t>::max() / (1 << 30) * (1 << 30);
    if (size > max_length)
        co_return qapi::generic("offset(" + std::to_string(size) + ") exceeds maximum(" + std::to_string(max_length) +
                                ")");
    if (n->read_only())
        co_return qapi::generic("Image is read-only");
    if (auto why = n->cannot_resize())
        co_return qapi::generic(*why);
    const std::uint64_t old_size = n->size();
    if (auto r = co_await n->resize(static_cast<std::uint64_t>(size)); !r)
        co_return r.error();
    log::get("block")->info("node '{}' resized from {} to {} bytes", n->name(), old_size, size);
    co_return qapi::result<void>{};
}

} // namespace bjd::block
