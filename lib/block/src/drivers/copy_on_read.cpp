// SPDX-License-Identifier: MIT
// copy-on-read: the filter block-stream inserts above the node it fills.
#include "bjd/block/copy_on_read.hpp"
#include "bjd/block/driver.hpp"
#include "bjd/block/query.hpp"

#include <algorithm>

namespace bjd::block {

copy_on_read::copy_on_read(node_options o, std::shared_ptr<node> child, bool implicit, asio::any_io_executor ex)
    : filter_node(std::move(o), std::move(child), "file", implicit), changed_(ex)
{
}

std::optional<boost::json::object> copy_on_read::json_options() const
{
    return boost::json::object{{"driver", "copy-on-read"}, {"file", options_json(*below())}};
}

perm_pair copy_on_read::child_permissions(const edge& child, perm_pair cumulative) const
{
    // Pass-through, and populating writes what readers already see (QEMU's cor_child_perm).
    perm_pair p = filter_child_perms(cumulative);
    if (!read_only())
        p.perm |= perm_write_unchanged;
    return p;
}

asio::awaitable<std::size_t> copy_on_read::enter(std::uint64_t offset, std::uint64_t end, bool populate)
{
    auto conflicts = [&] {
        return std::any_of(ranges_.begin(), ranges_.end(), [&](const auto& r) {
            return r.second.populate != populate && r.second.offset < end && offset < r.second.end;
        });
    };
    while (conflicts())
        co_await changed_.wait();
    ranges_.push_back({next_id_, {offset, end, populate}});
    co_return next_id_++;
}

void copy_on_read::leave(std::size_t id)
{
    std::erase_if(ranges_, [id](const auto& r) { return r.first == id; });
    changed_.notify_all();
}

asio::awaitable<result<void>> copy_on_read::populate(std::uint64_t offset, std::uint64_t length,
                                                    std::span<std::byte> scratch)
{
    const std::uint64_t end = std::min(offset + length, below()->size());
    if (offset >= end)
        co_return result<void>{};
    if (scratch.empty())
        co_return errno_error(EINVAL);
    const std::size_t id = co_await enter(offset, end, true);
    result<void> r;
    while (r && offset < end) {
        auto st = co_await below()->block_status(offset, end - offset);
        if (!st) {
            r = st.error();
            break;
        }
        const std::uint64_t n = std::min(st->length, end - offset);
        // What the child holds itself (written by a guest, or copied before) stays.
        if (!(st->flags & status_allocated)) {
            for (std::uint64_t done = 0; r && done < n;) {
                auto data = scratch.first(std::min<std::uint64_t>(n - done, scratch.size()));
                r = co_await below()->read(offset + done, data);
                if (r)
                    r = co_await below()->write(offset + done, data);
                done += data.size();
            }
        }
        offset += n;
    }
    leave(id);
    co_return r;
}

asio::awaitable<result<void>> copy_on_read::do_read(std::uint64_t offset, std::span<std::byte> buf)
{
    co_return co_await below()->read(offset, buf);
}

asio::awaitable<result<void>> copy_on_read::do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua)
{
    const std::size_t id = co_await enter(offset, offset + buf.size(), false);
    auto r = co_await below()->write(offset, buf, fua);
    leave(id);
    co_return r;
}

asio::awaitable<result<void>> copy_on_read::do_write_zeroes(std::uint64_t offset, std::uint64_t length, zero_flags f)
{
    const std::size_t id = co_await enter(offset, offset + length, false);
    auto r = co_await below()->write_zeroes(offset, length, f);
    leave(id);
    co_return r;
}

asio::awaitable<result<void>> copy_on_read::do_discard(std::uint64_t offset, std::uint64_t length)
{
    const std::size_t id = co_await enter(offset, offset + length, false);
    auto r = co_await below()->discard(offset, length);
    leave(id);
    co_return r;
}

asio::awaitable<result<void>> copy_on_read::do_flush()
{
    co_return co_await below()->flush();
}

asio::awaitable<result<extent>> copy_on_read::do_block_status(std::uint64_t offset, std::uint64_t length)
{
    co_return co_await below()->block_status(offset, length);
}

} // namespace bjd::block
