// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The copy-on-read filter (QEMU's "copy-on-read" driver) that block-stream puts above the
/// node it fills. It passes every request through to that node, and `populate` copies what
/// the backing chain shows into the node itself. Populating a range and a guest's write to
/// the same range never overlap (QEMU serialises copy-on-read requests the same way), so the
/// data a stream copies never overwrites what a guest wrote meanwhile. Main loop only.
#include "bjd/block/filter_node.hpp"
#include "bjd/event_flag.hpp"

#include <boost/asio/any_io_executor.hpp>

#include <cstdint>
#include <memory>
#include <vector>

namespace bjd::block {

class copy_on_read final : public filter_node {
public:
    /// A filter above `child`; `implicit` when nobody named it (query views skip it).
    copy_on_read(node_options o, std::shared_ptr<node> child, bool implicit, asio::any_io_executor ex);

    std::string_view driver() const noexcept override { return "copy-on-read"; }
    /// Always a json: filename, {"driver": "copy-on-read", "file": {…the child…}}, as QEMU's.
    std::optional<boost::json::object> json_options() const override;

    /// Copies [offset, offset+length) as reads of the child show it into the child, wherever
    /// the child does not hold the data itself (it reads it from its backing chain). Waits
    /// for guest writes to the range first; guest writes to it wait for the copy. The data
    /// goes through `scratch` (aligned for O_DIRECT; any size > 0) in pieces of its size:
    /// a caller that populates again and again keeps one, so that the copy does not fault in
    /// fresh memory for every page it moves.
    asio::awaitable<result<void>> populate(std::uint64_t offset, std::uint64_t length, std::span<std::byte> scratch);

    // The filter leaves the graph with `drop_filter` (node.hpp); requests already inside it
    // finish on the child, which it keeps.

protected:
    perm_pair child_permissions(const edge& child, perm_pair cumulative) const override;
    asio::awaitable<result<void>> do_read(std::uint64_t offset, std::span<std::byte> buf) override;
    asio::awaitable<result<void>> do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) override;
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t offset, std::uint64_t length, zero_flags f) override;
    asio::awaitable<result<void>> do_discard(std::uint64_t offset, std::uint64_t length) override;
    asio::awaitable<result<void>> do_flush() override;
    asio::awaitable<result<extent>> do_block_status(std::uint64_t offset, std::uint64_t length) override;

private:
    struct range {
        std::uint64_t offset, end;
        bool populate;
    };
    /// Waits until no range of the other kind overlaps [offset, end), then registers it.
    asio::awaitable<std::size_t> enter(std::uint64_t offset, std::uint64_t end, bool populate);
    void leave(std::size_t id);

    std::vector<std::pair<std::size_t, range>> ranges_;
    std::size_t next_id_ = 0;
    event_flag changed_;
};

} // namespace bjd::block
