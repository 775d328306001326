// SPDX-License-Identifier: MIT
// change-backing-file's data part: rewriting the backing file name and the backing-format
// extension in a qcow2 header, keeping every other header extension as it was.
#include "bjd/block/create.hpp"

#include "bjd/log.hpp"
#include "drivers/qcow2/node.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace bjd::block {

namespace qcow2 {

namespace {

struct extension {
    std::uint32_t type;
    std::vector<std::byte> data;
};

/// The extensions between the header and the end marker (or the backing name, or the end
/// of the cluster), without the backing-format one.
std::vector<extension> other_extensions(std::span<const std::byte> c, const header& h)
{
    std::vector<extension> out;
    std::uint64_t limit = c.size();
    if (h.backing_file_offset != 0 && h.backing_file_offset < limit)
        limit = h.backing_file_offset;
    for (std::uint64_t off = h.header_length; off + 8 <= limit;) {
        const std::uint32_t type = load_be32(c.data() + off);
        const std::uint32_t len = load_be32(c.data() + off + 4);
        off += 8;
        if (type == ext_end || len > limit - off)
            break;
        if (type != ext_backing_format)
            out.push_back({type, std::vector<std::byte>(c.begin() + off, c.begin() + off + len)});
        off += (std::uint64_t(len) + 7) / 8 * 8;
    }
    return out;
}

} // namespace

asio::awaitable<result<void>> qcow2_node::change_backing_file(const std::string& name, const std::string& fmt)
{
    if (name.size() > max_backing_name || fmt.size() > 15)
        co_return errno_error(EINVAL);
    // Under the metadata lock: growing the refcount table rewrites header fields too.
    auto g = co_await meta_.lock();
    node* f = file();
    std::vector<std::byte> c(static_cast<std::size_t>(std::min<std::uint64_t>(cs_, f->size())));
    if (auto r = co_await f->read(0, c); !r)
        co_return r;
    auto exts = other_extensions(c, h_);

    // Serialise: backing format first (as QEMU does), the others in their order, the end
    // marker, then the name.
    std::vector<std::byte> area;
    auto put = [&](std::uint32_t type, std::span<const std::byte> data) {
        std::size_t at = area.size();
        area.resize(at + 8 + (data.size() + 7) / 8 * 8);
        store_be32(area.data() + at, type);
        store_be32(area.data() + at + 4, static_cast<std::uint32_t>(data.size()));
        std::memcpy(area.data() + at + 8, data.data(), data.size());
    };
    if (!fmt.empty())
        put(ext_backing_format, std::as_bytes(std::span(fmt.data(), fmt.size())));
    for (const auto& e : exts)
        put(e.type, e.data);
    area.resize(area.size() + 8);   // end marker
    const std::uint64_t name_off = h_.header_length + area.size();
    if (name_off + name.size() > c.size())
        co_return errno_error(ENOSPC);
    std::fill(c.begin() + h_.header_length, c.end(), std::byte{0});
    std::memcpy(c.data() + h_.header_length, area.data(), area.size());
    std::memcpy(c.data() + name_off, name.data(), name.size());
    store_be64(c.data() + 8, name_off);
    store_be32(c.data() + 16, static_cast<std::uint32_t>(name.size()));

    if (!f->read_only()) {
        if (auto r = co_await f->write(0, c); !r)
            co_return r;
        if (auto r = co_await f->flush(); !r)
            co_return r;
    } else {
        // QEMU reopens the image read-write for the change; a second descriptor does the same
        // without disturbing the node (OFD locks belong to the node's own descriptor).
        int fd = ::open(f->filename().c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0)
            co_return errno_error(errno);
        ssize_t w = ::pwrite(fd, c.data(), c.size(), 0);
        int e = w < 0 ? errno : (std::size_t(w) != c.size() ? EIO : 0);
        if (e == 0 && ::fdatasync(fd) != 0)
            e = errno;
        ::close(fd);
        if (e)
            co_return errno_error(e);
    }
    h_.backing_file_offset = name_off;
    h_.backing_file_size = static_cast<std::uint32_t>(name.size());
    h_.backing_file = info_.backing_file = name;
    h_.backing_format = info_.backing_format = fmt;
    auto_backing_file_ = name;
    log::get("qcow2")->info("qcow2 node '{}': backing file changed to '{}' (format '{}')", this->name(), name, fmt);
    co_return result<void>{};
}

} // namespace qcow2

asio::awaitable<result<void>> qcow2_change_backing_file(node& image, const std::string& backing_file,
                                                        const std::string& backing_fmt)
{
    auto* q = dynamic_cast<qcow2::qcow2_node*>(&image);
    if (!q)
        co_return errno_error(ENOTSUP);
    co_return co_await q->change_backing_file(backing_file, backing_fmt);
}

} // namespace bjd::block
