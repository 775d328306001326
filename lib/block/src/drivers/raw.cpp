// SPDX-License-Identifier: MIT
// raw: the format driver without a format: a window of its file child.
#include "bjd/block/driver.hpp"
#include "bjd/block/query.hpp"

#include <string>

namespace bjd::block {
namespace {

class raw_node final : public node {
public:
    raw_node(node_options o, std::shared_ptr<node> file, std::uint64_t offset, std::uint64_t size, bool explicit_size)
        : node(std::move(o)), offset_(offset), size_(size), explicit_size_(explicit_size)
    {
        add_child("file", std::move(file));
    }

    std::string_view driver() const noexcept override { return "raw"; }
    std::optional<boost::json::object> json_options() const override
    {
        auto child = file()->json_options();
        if (offset_ == 0 && !explicit_size_ && !child)
            return std::nullopt;
        boost::json::object o{{"driver", "raw"}, {"file", options_json(*file())}};
        if (offset_ || explicit_size_)
            o["offset"] = offset_;
        if (explicit_size_)
            o["size"] = size_;
        return o;
    }
    std::uint64_t size() const noexcept override { return size_; }
    std::int64_t allocated_size() const override { return file()->allocated_size(); }
    std::uint32_t request_alignment() const noexcept override { return file()->request_alignment(); }
    bool zero_init() const noexcept override { return offset_ == 0 && file()->zero_init(); }

protected:
    // Without a window raw is a filter of its file. With one (QEMU's raw_child_perm) the file
    // is storage that nobody else may resize, and raw writes or resizes it only for its users.
    perm_pair child_permissions(const edge&, perm_pair cumulative) const override
    {
        if (offset_ == 0 && !explicit_size_)
            return filter_child_perms(cumulative);
        perm_pair p = storage_child_perms(cumulative, false, !read_only());
        p.perm = (p.perm & ~(perm_write | perm_resize)) | (cumulative.perm & (perm_write | perm_resize));
        return p;
    }

    // The forwards return the file's awaitable rather than awaiting it: no coroutine frame of
    // their own, which would cost an allocation per request.
    asio::awaitable<result<void>> do_read(std::uint64_t off, std::span<std::byte> buf) override
    {
        return file()->read(offset_ + off, buf);
    }
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool fua) override
    {
        return file()->write(offset_ + off, buf, fua);
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t off, std::uint64_t len, zero_flags f) override
    {
        // no_fallback: the layer above decides whether to emulate, once, at the top.
        f.no_fallback = true;
        return file()->write_zeroes(offset_ + off, len, f);
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t off, std::uint64_t len) override
    {
        return file()->discard(offset_ + off, len);
    }
    asio::awaitable<result<void>> do_flush() override { return file()->flush(); }
    std::optional<std::string> cannot_resize() const override
    {
        if (explicit_size_)
            return "Cannot resize fixed-size raw disks";
        return file()->cannot_resize();
    }
    asio::awaitable<result<void>> do_truncate(std::uint64_t size) override
    {
        auto r = co_await file()->truncate(offset_ + size);
        if (r)
            size_ = size;
        co_return r;
    }
    asio::awaitable<result<extent>> do_block_status(std::uint64_t off, std::uint64_t len) override
    {
        return file()->block_status(offset_ + off, len);
    }
    std::optional<result<extent>> do_block_status_now(std::uint64_t off, std::uint64_t len) override
    {
        return file()->block_status_now(offset_ + off, len);
    }
    bool can_clone() const noexcept override { return file()->can_clone(); }
    asio::awaitable<result<void>> do_clone_to(std::uint64_t off, std::uint64_t len, node& target,
                                             std::uint64_t target_off) override
    {
        return file()->clone_to(offset_ + off, len, target, target_off);
    }
    asio::awaitable<result<void>> do_clone_from(std::uint64_t off, std::uint64_t len, const clone_source& src) override
    {
        return file()->clone_from(offset_ + off, len, src);
    }

private:
    node* file() const noexcept { return child("file"); }

    std::uint64_t offset_;
    std::uint64_t size_;
    bool explicit_size_;
};

} // namespace

qapi::result<std::shared_ptr<node>> open_raw(node_options common, std::shared_ptr<node> file, std::uint64_t offset,
                                            std::optional<std::uint64_t> size)
{
    // QEMU's raw_read_options checks, in its order and words.
    std::uint64_t fsize = file->size();
    if (offset > fsize)
        return qapi::generic("Offset (" + std::to_string(offset) + ") cannot be greater than size of the containing file (" +
                             std::to_string(fsize) + ")");
    std::uint64_t sz = size.value_or(fsize - offset);
    if (size && (fsize - offset < sz))
        return qapi::generic("The sum of offset (" + std::to_string(offset) + ") and size (" + std::to_string(sz) +
                             ") has to be smaller or equal to the  actual size of the containing file (" +
                             std::to_string(fsize) + ")");
    if (size && sz % 512 != 0)
        return qapi::generic("Specified size is not multiple of 512");
    return std::shared_ptr<node>(std::make_shared<raw_node>(std::move(common), std::move(file), offset, sz, size.has_value()));
}

} // namespace bjd::block
