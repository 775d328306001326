// SPDX-License-Identifier: MIT
// Named drives: the medium edge, the front node that forwards I/O to it, and the removable
// media rules of QEMU 7.2 (QEMU's blockdev.c media commands).
#include "bjd/block/backend.hpp"

#include "bjd/log.hpp"

#include <cerrno>

namespace bjd::block {

// ---- front node ---------------------------------------------------------------------------------

/// Forwards every request to the drive's medium; ENOMEDIUM when there is none or the tray is
/// open (QEMU's blk_is_available). Anonymous: not in the graph, so node views never show it.
class drive_front final : public node {
public:
    explicit drive_front(backend& owner) : node(owner.name(), false), owner_(&owner) {}

    void orphan() noexcept { owner_ = nullptr; }

    std::string_view driver() const noexcept override { return "drive"; }
    std::string filename() const override
    {
        node* m = available();
        return m ? m->filename() : std::string();
    }
    std::uint64_t size() const noexcept override
    {
        if (owner_ && owner_->medium())
            return owner_->medium()->size();
        return owner_ ? owner_->last_size_ : 0;
    }
    std::uint32_t request_alignment() const noexcept override
    {
        node* m = owner_ ? owner_->medium() : nullptr;
        return m ? m->request_alignment() : 1;
    }
    std::uint32_t cluster_size() const noexcept override
    {
        node* m = owner_ ? owner_->medium() : nullptr;
        return m ? m->cluster_size() : 0;
    }

protected:
    /// The drive's users (exports, jobs) take their permissions on the medium through the
    /// drive's own edge, which the front node forwards to.
    std::vector<edge*> permission_edges() const override
    {
        if (!owner_)
            return {};
        return {&owner_->medium_};
    }

    asio::awaitable<result<void>> do_read(std::uint64_t offset, std::span<std::byte> buf) override
    {
        auto m = hold();
        if (!m)
            co_return errno_error(ENOMEDIUM);
        co_return co_await m->read(offset, buf);
    }
    asio::awaitable<result<void>> do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) override
    {
        auto m = hold();
        if (!m)
            co_return errno_error(ENOMEDIUM);
        co_return co_await m->write(offset, buf, fua);
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t offset, std::uint64_t length, zero_flags flags) override
    {
        auto m = hold();
        if (!m)
            co_return errno_error(ENOMEDIUM);
        co_return co_await m->write_zeroes(offset, length, flags);
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t offset, std::uint64_t length) override
    {
        auto m = hold();
        if (!m)
            co_return errno_error(ENOMEDIUM);
        co_return co_await m->discard(offset, length);
    }
    asio::awaitable<result<void>> do_flush() override
    {
        auto m = hold();
        if (!m)
            co_return errno_error(ENOMEDIUM);
        co_return co_await m->flush();
    }
    asio::awaitable<result<extent>> do_block_status(std::uint64_t offset, std::uint64_t length) override
    {
        auto m = hold();
        if (!m)
            co_return errno_error(ENOMEDIUM);
        co_return co_await m->block_status(offset, length);
    }
    asio::awaitable<result<void>> do_truncate(std::uint64_t size) override
    {
        auto m = hold();
        if (!m)
            co_return errno_error(ENOMEDIUM);
        co_return co_await m->truncate(size);
    }

private:
    node* available() const noexcept
    {
        if (!owner_ || owner_->tray_open_)
            return nullptr;
        return owner_->medium();
    }
    /// The medium, kept alive for the duration of one request (it may be removed meanwhile).
    std::shared_ptr<node> hold() const
    {
        if (!available())
            return nullptr;
        return owner_->medium_shared();
    }

    backend* owner_;
};

// ---- backend ------------------------------------------------------------------------------------

backend::backend(const drive_options& opts)
    : name_(opts.id)
    , removable_(opts.removable)
    , tray_(opts.tray)
    , tray_open_(opts.tray && opts.tray_open)
    , locked_(opts.tray && opts.locked)
    , medium_(parent_kind::backend, "block device '" + opts.id + "'", "root")
    , front_(std::make_shared<drive_front>(*this))
{
    auto& a = front_->acct();
    a.set_intervals(opts.stats_intervals);
    a.set_account_invalid(opts.stats_account_invalid);
    a.set_account_failed(opts.stats_account_failed);
}

backend::~backend()
{
    front_->orphan();
    medium_.detach();
}

node* backend::visible_medium() const noexcept
{
    node* n = medium_.get();
    while (n && n->implicit() && n->primary_child())
        n = n->primary_child();
    return n;
}

std::shared_ptr<node> backend::front() const { return front_; }

stats::block_acct& backend::acct() noexcept { return front_->acct(); }

bool backend::in_use() const { return !front_->parents().empty(); }

qapi::result<tray_change> backend::open_tray(bool force)
{
    if (!removable_)
        return qapi::generic("Device '" + name_ + "' is not removable");
    if (!tray_ || tray_open_)
        return tray_change{};
    if (locked_ && !force)
        return tray_change{};   // QEMU sends the guest an eject request; we have no guest
    locked_ = false;
    tray_open_ = true;
    return tray_change{true, true};
}

qapi::result<tray_change> backend::open_tray_checked(bool force, bool& no_tray)
{
    no_tray = false;
    if (!removable_)
        return qapi::generic("Device '" + name_ + "' is not removable");
    if (!tray_) {
        no_tray = true;
        return tray_change{};
    }
    if (tray_open_)
        return tray_change{};
    if (locked_ && !force)
        return qapi::generic("Device '" + name_ + "' is locked and force was not specified, wait for tray to open and try again");
    locked_ = false;
    tray_open_ = true;
    return tray_change{true, true};
}

qapi::result<tray_change> backend::close_tray()
{
    if (!removable_)
        return qapi::generic("Device '" + name_ + "' is not removable");
    if (!tray_ || !tray_open_)
        return tray_change{};
    tray_open_ = false;
    return tray_change{true, false};
}

qapi::result<void> backend::remove_medium()
{
    if (!removable_)
        return qapi::generic("Device '" + name_ + "' is not removable");
    if (tray_ && !tray_open_)
        return qapi::generic("Tray of device '" + name_ + "' is not open");
    node* m = medium_.get();
    if (!m)
        return {};
    if (auto r = m->check_op(block_op::other, name_); !r)
        return r;
    last_size_ = m->size();
    read_only_state_ = m->read_only();
    log::get("block")->info("drive '{}': medium '{}' removed", name_, m->name());
    medium_.detach();
    return {};
}

qapi::result<void> backend::insert_medium(std::shared_ptr<node> n)
{
    if (!removable_)
        return qapi::generic("Device is not removable");
    if (tray_ && !tray_open_)
        return qapi::generic("Tray of the device is not open");
    if (medium_)
        return qapi::generic("There already is a medium in the device");
    return attach(std::move(n));
}

qapi::result<void> backend::attach(std::shared_ptr<node> n)
{
    if (auto r = medium_.attach(n); !r)
        return r;
    last_size_ = n->size();
    read_only_state_ = n->read_only();
    log::get("block")->info("drive '{}': medium '{}' inserted", name_, n->name());
    return {};
}

qapi::result<void> check_free_node(const node& n)
{
    if (!n.parents().empty())
        return qapi::generic("Node '" + n.name() + "' is already in use");
    return {};
}

} // namespace bjd::block
