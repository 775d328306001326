// SPDX-License-Identifier: MIT
// file: host files and block devices, through the loop's I/O engine.
#include "bjd/block/driver.hpp"
#include "image_lock.hpp"
#include "bjd/io/buffer.hpp"
#include "bjd/log.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cassert>
#include <cstring>

namespace bjd::block {
namespace {

class file_node final : public node {
public:
    file_node(node_options o, std::string filename, int fd, bool fd_writable, std::uint64_t size, bool is_block,
              std::uint32_t align, bool locking, io::engine& engine)
        : node(std::move(o)), filename_(std::move(filename)), fd_(fd), fd_writable_(fd_writable), size_(size),
          is_block_(is_block), align_(align), locking_(locking), engine_(engine)
    {
    }
    ~file_node() override { ::close(fd_); }

    std::string_view driver() const noexcept override { return "file"; }
    std::string filename() const override { return filename_; }
    std::uint64_t size() const noexcept override { return size_; }
    std::uint32_t request_alignment() const noexcept override { return align_; }
    std::uint32_t write_padding() const noexcept override { return align_; }   // bounce_write
    bool zero_init() const noexcept override { return !is_block_; }
    std::int64_t allocated_size() const override
    {
        struct stat st{};
        if (::fstat(fd_, &st) != 0)
            return -1;
        return is_block_ ? -1 : static_cast<std::int64_t>(st.st_blocks) * 512;
    }

protected:
    // Permissions, in QEMU's two phases (file-posix.c: raw_check_perm, raw_set_perm,
    // raw_abort_perm_update). Image locks follow what the node's users take: a node nobody
    // uses locks nothing. An auto-read-only file is open read-write exactly while someone
    // may write it (QEMU's dynamic auto-read-only), so a file that cannot be written can
    // still be added and read.
    qapi::result<void> prepare_permissions(perm_pair cum) override
    {
        assert(pending_fd_ < 0);
        const bool rw = wants_read_write(cum.perm);
        if (rw != fd_writable_) {
            const int flags = (::fcntl(fd_, F_GETFL) & O_DIRECT) | O_CLOEXEC | (rw ? O_RDWR : O_RDONLY);
            int nfd = ::open(filename_.c_str(), flags);
            if (nfd >= 0) {
                pending_fd_ = nfd;
                pending_writable_ = rw;
            } else if (rw) {
                return qapi::generic("Could not open '" + filename_ + "': " + std::strerror(errno));
            }
            // else: giving up write access; keeping the read-write descriptor is safe.
        }
        if (locking_) {
            // Hold the old and the new bytes together while checking, so that nobody slips in
            // between; the new descriptor gets exactly the new ones.
            auto r = detail::hold_image_locks(fd_, locked_.perm | cum.perm, locked_.shared & cum.shared);
            if (r)
                r = detail::check_image_locks(fd_, cum.perm, cum.shared, filename_);
            if (r && pending_fd_ >= 0)
                r = detail::hold_image_locks(pending_fd_, cum.perm, cum.shared);
            if (!r) {
                abort_permissions();
                return r;
            }
        }
        pending_ = cum;
        return {};
    }

    void commit_permissions() override
    {
        if (pending_fd_ >= 0) {
            // dup3() swaps the open file under the same fd number, so requests queued for
            // submission with that number reach the new file and in-flight ones finish on
            // the old one; the old file's locks go with its last reference.
            if (::dup3(pending_fd_, fd_, O_CLOEXEC) >= 0) {
                fd_writable_ = pending_writable_;
                log::get("block")->info("node '{}': auto-read-only file '{}' reopened {}", name(), filename_,
                                        fd_writable_ ? "read-write" : "read-only");
            } else {
                log::get("block")->error("node '{}': cannot switch to the reopened '{}': {}", name(), filename_,
                                         std::strerror(errno));
            }
            ::close(pending_fd_);
            pending_fd_ = -1;
        }
        if (locking_)
            (void)detail::hold_image_locks(fd_, pending_.perm, pending_.shared);   // only releases
        locked_ = pending_;
    }

    void abort_permissions() override
    {
        if (pending_fd_ >= 0) {
            ::close(pending_fd_);
            pending_fd_ = -1;
        }
        if (locking_)
            (void)detail::hold_image_locks(fd_, locked_.perm, locked_.shared);   // only releases
    }

    bool wants_read_write(unsigned perm) const noexcept
    {
        if (options().read_only)
            return false;
        if (options().auto_read_only)
            return (perm & (perm_write | perm_write_unchanged | perm_resize)) != 0;
        return true;
    }

    asio::awaitable<result<void>> do_read(std::uint64_t off, std::span<std::byte> buf) override
    {
        if (misaligned(off, buf.size(), buf.data()))
            co_return co_await bounce_read(off, buf);
        auto r = co_await engine_.read(fd_, buf, off, hint(buf.size()));
        if (!r)
            co_return r.error();
        // The node's size is fixed at open: a file truncated behind our back reads as zeroes.
        if (*r < buf.size())
            std::memset(buf.data() + *r, 0, buf.size() - *r);
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool fua) override
    {
        // The common write is the engine's awaitable itself, without a frame of its own.
        if (!misaligned(off, buf.size(), buf.data()) && !flushes_after(fua))
            return engine_.write(fd_, buf, off, hint(buf.size()));
        return write_slow(off, buf, fua);
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t off, std::uint64_t len, zero_flags f) override
    {
        if (is_block_)
            co_return errno_error(ENOTSUP);
        // Punching guarantees zeroes on every file system that supports it; ZERO_RANGE keeps the
        // blocks allocated, which is what a caller that forbids holes wants.
        int mode = f.may_unmap ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) : FALLOC_FL_ZERO_RANGE;
        known_data_.forget(off, len);   // either may leave a hole (ZERO_RANGE: unwritten extents)
        auto r = co_await engine_.fallocate(fd_, mode, off, len);
        if (!r && r.error() == std::errc::operation_not_supported && f.may_unmap)
            r = co_await engine_.fallocate(fd_, FALLOC_FL_ZERO_RANGE, off, len);
        known_data_.forget(off, len);   // and again: a lookup may have run while it was in flight
        co_return r;
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t off, std::uint64_t len) override
    {
        if (is_block_)
            co_return errno_error(ENOTSUP);
        known_data_.forget(off, len);
        auto r = co_await engine_.fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
        known_data_.forget(off, len);
        co_return r;
    }
    bool can_clone() const noexcept override { return !is_block_; }
    asio::awaitable<result<void>> do_clone_to(std::uint64_t off, std::uint64_t len, node& target,
                                             std::uint64_t target_off) override
    {
        co_return co_await target.clone_from(target_off, len, clone_source{fd_, off});
    }
    asio::awaitable<result<void>> do_clone_from(std::uint64_t off, std::uint64_t len, const clone_source& src) override
    {
        known_data_.forget(off, len);   // a reflink brings the source's holes along
        auto r = co_await engine_.clone_range(src.fd, src.offset, fd_, off, len);
        known_data_.forget(off, len);
        co_return r;
    }
    std::optional<std::string> cannot_resize() const override { return std::nullopt; }
    asio::awaitable<result<void>> do_truncate(std::uint64_t size) override
    {
        // Block devices keep their size; a regular file is resized in place (cheap metadata).
        if (is_block_)
            co_return size <= size_ ? result<void>{} : result<void>{errno_error(ENOSPC)};
        known_data_ = {};
        if (::ftruncate(fd_, static_cast<off_t>(size)) != 0)
            co_return errno_error(errno);
        size_ = size;
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_flush() override
    {
        if (options().cache_no_flush)
            co_return result<void>{};
        co_return co_await engine_.fsync(fd_, true);
    }
    asio::awaitable<result<extent>> do_block_status(std::uint64_t off, std::uint64_t len) override
    {
        co_return **do_block_status_now(off, len);
    }
    std::optional<result<extent>> do_block_status_now(std::uint64_t off, std::uint64_t len) override
    {
        // SEEK_DATA/SEEK_HOLE are cheap metadata lookups; doing them inline keeps the answer
        // consistent with the writes this loop has completed.
        if (is_block_)
            return extent{status_data | status_allocated, len};
        if (known_data_.covers(off))
            return extent{status_data | status_allocated, std::min(len, known_data_.end - off)};
        off_t data = ::lseek(fd_, static_cast<off_t>(off), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO)   // no data after off: a hole up to the end
                return extent{status_zero, len};
            return extent{status_data | status_allocated, len};
        }
        if (static_cast<std::uint64_t>(data) > off)
            return extent{status_zero, std::min<std::uint64_t>(len, data - off)};
        off_t hole = ::lseek(fd_, static_cast<off_t>(off), SEEK_HOLE);
        if (hole < 0 || static_cast<std::uint64_t>(hole) <= off)
            return extent{status_data | status_allocated, len};
        known_data_ = {off, static_cast<std::uint64_t>(hole)};
        return extent{status_data | status_allocated, std::min<std::uint64_t>(len, hole - off)};
    }

private:
    /// Large requests on a file without O_DIRECT (alignment 1) are copies through the page
    /// cache: let the engine do them beside the loop (io::io_hint::offload). Small ones stay
    /// inline, where a cached 4 KiB read is quickest.
    io::io_hint hint(std::size_t len) const noexcept
    {
        constexpr std::size_t offload_min = 256u << 10;
        return align_ == 1 && len >= offload_min ? io::io_hint::offload : io::io_hint::none;
    }

    bool misaligned(std::uint64_t off, std::size_t len, const void* p) const noexcept
    {
        return align_ > 1 && ((off | len | reinterpret_cast<std::uintptr_t>(p)) & (align_ - 1)) != 0;
    }

    // O_DIRECT needs aligned offsets, lengths and memory: go through an aligned bounce buffer.
    // FIXME: a bounced write is read-modify-write of the edge blocks and is not serialised
    // against an overlapping write in flight; NBD clients and jobs send aligned requests.
    asio::awaitable<result<void>> bounce_read(std::uint64_t off, std::span<std::byte> buf)
    {
        std::uint64_t start = off / align_ * align_;
        std::uint64_t end = (off + buf.size() + align_ - 1) / align_ * align_;
        io::aligned_buffer tmp(end - start);
        auto r = co_await engine_.read(fd_, tmp.span(), start);
        if (!r)
            co_return r.error();
        if (*r < tmp.size())
            std::memset(tmp.data() + *r, 0, tmp.size() - *r);
        std::memcpy(buf.data(), tmp.data() + (off - start), buf.size());
        co_return result<void>{};
    }
    /// A FUA write is followed by an fdatasync, unless cache.no-flush drops flushes.
    bool flushes_after(bool fua) const noexcept { return fua && !options().cache_no_flush; }
    /// do_write for a misaligned write or one followed by a flush.
    asio::awaitable<result<void>> write_slow(std::uint64_t off, std::span<const std::byte> buf, bool fua)
    {
        auto r = misaligned(off, buf.size(), buf.data()) ? co_await bounce_write(off, buf)
                                                          : co_await engine_.write(fd_, buf, off, hint(buf.size()));
        if (r && flushes_after(fua))
            r = co_await engine_.fsync(fd_, true);
        co_return r;
    }
    asio::awaitable<result<void>> bounce_write(std::uint64_t off, std::span<const std::byte> buf)
    {
        std::uint64_t start = off / align_ * align_;
        std::uint64_t end = (off + buf.size() + align_ - 1) / align_ * align_;
        io::aligned_buffer tmp(end - start);
        if (start != off || end != off + buf.size()) {
            auto r = co_await engine_.read(fd_, tmp.span(), start);
            if (!r)
                co_return r.error();
            if (*r < tmp.size())
                std::memset(tmp.data() + *r, 0, tmp.size() - *r);
        }
        std::memcpy(tmp.data() + (off - start), buf.data(), buf.size());
        // Never extend the file past its size because of the rounding.
        std::uint64_t len = std::min<std::uint64_t>(end, std::max<std::uint64_t>(size_, off + buf.size())) - start;
        len = (len + align_ - 1) / align_ * align_;
        co_return co_await engine_.write(fd_, std::span<const std::byte>(tmp.data(), len), start);
    }

    /// The data region that SEEK_DATA/SEEK_HOLE found last, remembered as QEMU's block-status
    /// cache does (BdrvBlockStatusCache, block/io.c): a lookup inside it makes no system call.
    /// SEEK_HOLE costs as much as the extents (on tmpfs: the pages) between the offset and the
    /// next hole, so a copy that asks chunk by chunk across a large data region would pay for
    /// the rest of that region every time. Only data is remembered, since a write never turns
    /// data into a hole; what can (a discard, a write of zeroes, a clone, a truncation through
    /// this node) forgets the region. A hole punched by another process is not seen, and
    /// reporting data there is still true to the contents: the range reads as zeroes.
    struct data_region {
        std::uint64_t start = 0, end = 0;
        bool covers(std::uint64_t off) const noexcept { return off >= start && off < end; }
        void forget(std::uint64_t off, std::uint64_t len) noexcept
        {
            if (off < end && off + len > start)
                *this = {};
        }
    };
    data_region known_data_;

    std::string filename_;
    int fd_;
    bool fd_writable_;
    perm_pair locked_;             ///< committed permissions, as the image locks show them
    perm_pair pending_;            ///< prepared, not yet committed
    int pending_fd_ = -1;          ///< the file opened again in the mode `pending_` needs
    bool pending_writable_ = false;
    std::uint64_t size_;
    bool is_block_;
    std::uint32_t align_;
    bool locking_;
    io::engine& engine_;
};

/// The smallest O_DIRECT read size the file accepts (512 or 4096), like QEMU's probe.
std::uint32_t probe_alignment(int fd, bool is_block)
{
    if (is_block) {
        int ssz = 0;
        if (::ioctl(fd, BLKSSZGET, &ssz) == 0 && ssz > 0)
            return static_cast<std::uint32_t>(ssz);
    }
    void* buf = std::aligned_alloc(4096, 4096);
    std::uint32_t found = 4096;
    for (std::uint32_t a : {512u, 4096u}) {
        ssize_t n = ::pread(fd, buf, a, 0);
        if (n >= 0 || errno != EINVAL) {
            found = a;
            break;
        }
    }
    std::free(buf);
    return found;
}

} // namespace

qapi::result<std::shared_ptr<node>> open_file(node_options common, const file_open_options& fo, io::engine& engine)
{
    // auto-read-only (QEMU's dynamic auto-read-only): read-only until a writer attaches.
    const bool writable = !common.read_only && !common.auto_read_only;
    int flags = O_CLOEXEC | (writable ? O_RDWR : O_RDONLY);
    if (common.cache_direct)
        flags |= O_DIRECT;
    int fd = ::open(fo.filename.c_str(), flags);
    if (fd < 0)
        return qapi::generic("Could not open '" + fo.filename + "': " + std::strerror(errno));

    struct stat st{};
    if (::fstat(fd, &st) != 0) {
        int e = errno;
        ::close(fd);
        return qapi::generic("Could not open '" + fo.filename + "': " + std::strerror(e));
    }
    bool is_block = S_ISBLK(st.st_mode);
    if (!is_block && !S_ISREG(st.st_mode)) {
        ::close(fd);
        return qapi::generic("'" + fo.filename + "' is not a regular file or block device");
    }
    std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
    if (is_block && ::ioctl(fd, BLKGETSIZE64, &size) != 0) {
        int e = errno;
        ::close(fd);
        return qapi::generic("Could not open '" + fo.filename + "': " + std::strerror(e));
    }

    std::uint32_t align = common.cache_direct ? probe_alignment(fd, is_block) : 1;
    return std::shared_ptr<node>(
        std::make_shared<file_node>(std::move(common), fo.filename, fd, writable, size, is_block, align, fo.locking,
                                    engine));
}

} // namespace bjd::block
