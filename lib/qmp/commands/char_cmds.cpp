// SPDX-License-Identifier: MIT
// Character devices: chardev-add/chardev-remove (ring buffers), query-chardev, ringbuf-write
// and ringbuf-read (QEMU's chardev/char-ringbuf.c; strict base64 is a documented difference, see schemas/char.json).
#include "bjd/chardev/base64.hpp"
#include "bjd/chardev/registry.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"

#include <cstring>

namespace bjd::qapi {

boost::asio::awaitable<result<std::vector<chardev_info>>> qmp_query_chardev(qmp::context& ctx)
{
    std::vector<chardev_info> out;
    if (ctx.chardevs)
        for (auto& i : ctx.chardevs->query())
            out.push_back({i.label, i.filename, i.frontend_open});
    co_return out;
}

boost::asio::awaitable<result<chardev_return>> qmp_chardev_add(qmp::context& ctx, chardev_add_args args)
{
    if (!ctx.chardevs)
        co_return generic("Failed to add chardev '" + args.id + "': no chardev registry");
    const auto& u = args.backend.u;
    const auto& wrapper = args.backend.type == chardev_backend_kind::memory ? u.memory : u.ringbuf;
    std::int64_t size = chardev::default_ringbuf_size;
    if (wrapper && wrapper->data.size)
        size = *wrapper->data.size;
    if (auto r = ctx.chardevs->add_ringbuf(args.id, size, args.backend.type == chardev_backend_kind::memory); !r)
        co_return r.error();
    co_return chardev_return{};
}

boost::asio::awaitable<result<void>> qmp_chardev_remove(qmp::context& ctx, chardev_remove_args args)
{
    if (!ctx.chardevs)
        co_return generic("Chardev '" + args.id + "' not found");
    co_return ctx.chardevs->remove(args.id);
}

boost::asio::awaitable<result<void>> qmp_ringbuf_write(qmp::context& ctx, ringbuf_write_args args)
{
    if (!ctx.chardevs)
        co_return generic("Device '" + args.device + "' not found");
    auto rb = ctx.chardevs->find_ringbuf(args.device);
    if (!rb)
        co_return rb.error();
    if (args.format.value_or(data_format::utf8) == data_format::base64) {
        auto bytes = chardev::base64_decode(args.data);
        if (!bytes)
            co_return bytes.error();   // strict: nothing is written
        (*rb)->write(*bytes);
    } else {
        (*rb)->write(args.data);
    }
    co_return result<void>{};
}

boost::asio::awaitable<result<std::string>> qmp_ringbuf_read(qmp::context& ctx, ringbuf_read_args args)
{
    if (!ctx.chardevs)
        co_return generic("Device '" + args.device + "' not found");
    auto rb = ctx.chardevs->find_ringbuf(args.device);
    if (!rb)
        co_return rb.error();
    if (args.size <= 0)
        co_return generic("size must be greater than zero");
    std::string bytes = (*rb)->read(static_cast<std::size_t>(args.size));
    if (args.format.value_or(data_format::utf8) == data_format::base64)
        co_return chardev::base64_encode(bytes);
    // QEMU returns the bytes as a C string: everything from the first NUL on is lost (but
    // consumed). Invalid UTF-8 becomes U+FFFD in the JSON writer.
    bytes.resize(std::strlen(bytes.c_str()));
    co_return bytes;
}

} // namespace bjd::qapi
