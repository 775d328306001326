// SPDX-License-Identifier: MIT
// blockdev-create driver=file: create or truncate a host file and give it its size, with
// QEMU 7.2's steps and texts (file-posix.c raw_co_create).
#include "bjd/block/create.hpp"
#include "image_lock.hpp"

#include "bjd/log.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

namespace bjd::block {

namespace {

std::string errno_text(int e) { return std::strerror(e); }

/// Closes the descriptor (dropping its locks) on every path.
struct fd_guard {
    int fd = -1;
    ~fd_guard()
    {
        if (fd >= 0)
            ::close(fd);
    }
};

/// raw_co_create's locking: take write and resize, do not share resize; refused when
/// someone else does not share write or holds resize.
qapi::result<void> take_create_locks(int fd, const std::string& filename)
{
    return detail::apply_image_locks(fd, perm_write | perm_resize, perm_all & ~perm_resize, filename);
}

/// Writes zeroes over the first block so that later alignment probes find it allocated
/// (QEMU's allocate_first_block); failures are ignored.
void allocate_first_block(int fd, std::uint64_t max_size)
{
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(max_size, 4096));
    std::vector<char> zero(n, 0);
    [[maybe_unused]] auto r = ::pwrite(fd, zero.data(), n, 0);
}

void set_nocow(int fd)
{
    int attr = 0;
    if (::ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
        attr |= FS_NOCOW_FL;
        ::ioctl(fd, FS_IOC_SETFLAGS, &attr);
    }
}

void set_extent_size_hint(int fd, std::uint64_t hint, bool explicit_hint, const std::string& filename)
{
    struct fsxattr attr{};
    int r = ::ioctl(fd, FS_IOC_FSGETXATTR, &attr);
    if (r == 0) {
        attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
        attr.fsx_extsize = static_cast<std::uint32_t>(hint);
        r = ::ioctl(fd, FS_IOC_FSSETXATTR, &attr);
    }
    if (r < 0 && explicit_hint && hint)
        log::get("block")->warn("{}: Failed to set extent size hint: {}", filename, errno_text(errno));
}

} // namespace

asio::awaitable<qapi::result<void>> create_file(const file_create_options& o)
{
    const std::uint64_t hint = o.extent_size_hint.value_or(1u << 20);
    if (hint > UINT32_MAX)
        co_return qapi::generic("Extent size hint is too large");
    if (o.size > static_cast<std::uint64_t>(INT64_MAX))
        co_return qapi::generic("Could not resize file: " + errno_text(EFBIG));

    fd_guard g;
    g.fd = ::open(o.filename.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (g.fd < 0)
        co_return qapi::generic("Could not create '" + o.filename + "': " + errno_text(errno));
    if (auto r = take_create_locks(g.fd, o.filename); !r)
        co_return r;
    if (::ftruncate(g.fd, 0) != 0)
        co_return qapi::generic("Could not resize file: " + errno_text(errno));
    if (o.nocow)
        set_nocow(g.fd);
    set_extent_size_hint(g.fd, hint, o.extent_size_hint.has_value(), o.filename);

    const auto size = static_cast<off_t>(o.size);
    switch (o.preallocation) {
    case prealloc_mode::off:
        if (::ftruncate(g.fd, size) != 0)
            co_return qapi::generic("Could not resize file: " + errno_text(errno));
        if (o.size > 0)
            allocate_first_block(g.fd, o.size);
        break;
    case prealloc_mode::falloc:
        if (o.size > 0) {
            if (int e = ::posix_fallocate(g.fd, 0, size); e != 0)
                co_return qapi::generic("Could not preallocate new data: " + errno_text(e));
            allocate_first_block(g.fd, 1);
        }
        break;
    case prealloc_mode::full: {
        if (::ftruncate(g.fd, size) != 0)
            co_return qapi::generic("Could not resize file: " + errno_text(errno));
        std::vector<char> zero(1u << 20, 0);
        auto ex = co_await asio::this_coro::executor;
        for (std::uint64_t done = 0; done < o.size;) {
            const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(zero.size(), o.size - done));
            ssize_t w = ::pwrite(g.fd, zero.data(), n, static_cast<off_t>(done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                co_return qapi::generic("Could not write zeros for preallocation: " + errno_text(w < 0 ? errno : EIO));
            done += static_cast<std::uint64_t>(w);
            // Let the loop serve other clients between chunks.
            co_await asio::post(ex, asio::use_awaitable);
        }
        if (::fsync(g.fd) != 0)
            co_return qapi::generic("Could not flush file to disk: " + errno_text(errno));
        break;
    }
    case prealloc_mode::metadata:
        co_return qapi::generic("Unsupported preallocation mode: metadata");
    }
    int fd = std::exchange(g.fd, -1);
    if (::close(fd) != 0)
        co_return qapi::generic("Could not close the new file: " + errno_text(errno));
    co_return qapi::result<void>{};
}

} // namespace bjd::block
