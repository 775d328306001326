// SPDX-License-Identifier: MIT
// Named drives: removable-media rules, the front node's forwarding and ENOMEDIUM, permissions
// passed to the medium, pivots, and the drive table's checks.
#include "bjd/block/backend.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/io/engine.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include "check_result.hpp"

#include <catch2/catch.hpp>

#include <cerrno>
#include <cstring>

using namespace bjd;
using namespace bjd::block;
namespace asio = boost::asio;


using bjd::test::ok;

namespace {

/// A RAM node filled with `fill`.
class mem_node final : public node {
public:
    mem_node(std::string name, std::size_t size, char fill, bool ro = false)
        : node(std::move(name), ro), data_(size, fill) {}
    std::string_view driver() const noexcept override { return "mem"; }
    std::uint64_t size() const noexcept override { return data_.size(); }

protected:
    asio::awaitable<result<void>> do_read(std::uint64_t off, std::span<std::byte> buf) override
    {
        std::memcpy(buf.data(), data_.data() + off, buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool) override
    {
        std::memcpy(data_.data() + off, buf.data(), buf.size());
        co_return result<void>{};
    }

private:
    std::string data_;
};

struct fixture {
    asio::io_context loop;
    std::unique_ptr<io::engine> eng = io::make_engine(loop, io::backend::threads);
    graph g{*eng, *eng};

    std::shared_ptr<node> add(const std::string& name, std::size_t size, char fill, bool ro = false)
    {
        auto n = std::make_shared<mem_node>(name, size, fill, ro);
        g.insert(n);
        return n;
    }

    /// Reads one byte at 0 through `n`: the byte, or -errno.
    int read_byte(node& n)
    {
        std::byte b{};
        auto f = asio::co_spawn(loop, n.read(0, std::span<std::byte>(&b, 1)), asio::use_future);
        loop.restart();
        loop.run();
        auto r = f.get();
        return r ? int(static_cast<unsigned char>(b)) : -r.error().value();
    }
};

drive_options cdrom(std::string id, std::string node = {})
{
    drive_options o;
    o.id = std::move(id);
    o.node_name = std::move(node);
    o.removable = true;
    o.tray = true;
    return o;
}

} // namespace

TEST_CASE_METHOD(fixture, "tray and medium rules")
{
    add("m0", 4096, 'a');
    add("m1", 4096, 'b');
    auto d = g.drives().add(cdrom("cd0", "m0"));
    REQUIRE(ok(d));
    backend& b = **d;
    CHECK(b.medium() == g.find("m0").get());

    CHECK(b.remove_medium().error().desc == "Tray of device 'cd0' is not open");
    CHECK(b.insert_medium(g.find("m1")).error().desc == "Tray of the device is not open");
    auto c = b.close_tray();
    REQUIRE(ok(c));
    CHECK_FALSE(c->moved);

    c = b.open_tray(false);
    REQUIRE(ok(c));
    CHECK(c->moved);
    CHECK(c->open);
    CHECK_FALSE(b.open_tray(false)->moved);   // already open: no event
    CHECK(b.insert_medium(g.find("m1")).error().desc == "There already is a medium in the device");

    g.find("m0")->set_blocker("block device is in use by block job: mirror");
    CHECK(b.remove_medium().error().desc == "Node 'cd0' is busy: block device is in use by block job: mirror");
    g.find("m0")->set_blocker({});
    REQUIRE(ok(b.remove_medium()));
    CHECK(b.medium() == nullptr);
    CHECK(g.find("m0")->parents().empty());
    REQUIRE(ok(b.remove_medium()));   // empty: no-op
    REQUIRE(ok(b.insert_medium(g.find("m1"))));
    CHECK(check_free_node(*g.find("m1")).error().desc == "Node 'm1' is already in use");
    c = b.close_tray();
    CHECK(c->moved);
    CHECK_FALSE(c->open);
}

TEST_CASE_METHOD(fixture, "locked trays and drives without a tray")
{
    add("m0", 4096, 'a');
    auto o = cdrom("cd0", "m0");
    o.locked = true;
    backend& b = **g.drives().add(o);
    CHECK_FALSE(b.open_tray(false)->moved);   // the guest is asked; nothing moves
    CHECK(b.locked());
    bool no_tray = false;
    CHECK(b.open_tray_checked(false, no_tray).error().desc ==
          "Device 'cd0' is locked and force was not specified, wait for tray to open and try again");
    auto c = b.open_tray_checked(true, no_tray);
    REQUIRE(ok(c));
    CHECK(c->moved);
    CHECK_FALSE(b.locked());

    drive_options fl;
    fl.id = "fd0";
    fl.removable = true;
    backend& f = **g.drives().add(fl);
    CHECK_FALSE(f.open_tray(false)->moved);
    f.open_tray_checked(false, no_tray);
    CHECK(no_tray);
    REQUIRE(ok(f.insert_medium(g.find("m0"))));   // no tray: media change directly
    CHECK(f.medium() == g.find("m0").get());
}

TEST_CASE_METHOD(fixture, "non-removable drives")
{
    add("hd", 4096, 'a');
    drive_options o;
    o.id = "hd0";
    o.node_name = "hd";
    backend& b = **g.drives().add(o);
    CHECK(b.open_tray(false).error().desc == "Device 'hd0' is not removable");
    CHECK(b.close_tray().error().desc == "Device 'hd0' is not removable");
    CHECK(b.remove_medium().error().desc == "Device 'hd0' is not removable");
    CHECK(b.insert_medium(nullptr).error().desc == "Device is not removable");
    drive_options empty;
    empty.id = "hd1";
    CHECK(g.drives().add(empty).error().desc == "Device needs media, but drive is empty");
}

TEST_CASE_METHOD(fixture, "the front node follows the medium and fails with ENOMEDIUM")
{
    add("m0", 4096, 'a');
    add("m1", 4096, 'b');
    backend& b = **g.drives().add(cdrom("cd0", "m0"));
    auto front = b.front();
    CHECK(read_byte(*front) == 'a');
    b.open_tray(false);
    CHECK(read_byte(*front) == -ENOMEDIUM);   // tray open: medium inaccessible
    b.remove_medium();
    CHECK(read_byte(*front) == -ENOMEDIUM);
    CHECK(front->size() == 4096);             // clients keep the last size
    b.insert_medium(g.find("m1"));
    b.close_tray();
    CHECK(read_byte(*front) == 'b');
    auto s = b.acct().read();
    CHECK(s[stats::op::read].operations == 2);
    CHECK(s[stats::op::read].failed == 2);
}

TEST_CASE_METHOD(fixture, "permissions taken on the front reach the medium")
{
    add("rw", 4096, 'a');
    add("ro", 4096, 'b', true);
    backend& b = **g.drives().add(cdrom("cd0", "rw"));
    edge user(parent_kind::export_, "export 'e0'", "root");
    user.attach(b.front());
    REQUIRE(ok(user.set_perms(perm_consistent_read | perm_write, perm_all)));
    CHECK((g.find("rw")->held_perm() & perm_write) != 0);
    b.open_tray(false);
    b.remove_medium();
    CHECK(g.find("rw")->held_perm() == 0);
    CHECK(b.insert_medium(g.find("ro")).error().desc == "Block node is read-only");
    CHECK(b.medium() == nullptr);
    CHECK(g.find("ro")->parents().empty());
    REQUIRE(ok(b.insert_medium(g.find("rw"))));
    CHECK((g.find("rw")->held_perm() & perm_write) != 0);
    CHECK(b.in_use());
    CHECK(g.drives().del("cd0").error().desc == "Drive 'cd0' is in use by an export");
    user.detach();
}

TEST_CASE_METHOD(fixture, "a pivot redirects the drive; lookups find drives first")
{
    add("src", 4096, 'a');
    auto dst = add("dst", 4096, 'b');
    backend& b = **g.drives().add(cdrom("cd0", "src"));
    replace_node(*g.find("src"), dst);
    CHECK(b.medium() == dst.get());
    auto n = g.lookup("cd0");
    REQUIRE(ok(n));
    CHECK(n->get() == dst.get());
    b.open_tray(false);
    b.remove_medium();
    CHECK(g.lookup("cd0").error().desc == "Device 'cd0' has no medium");
    CHECK(g.lookup("nope").error().desc == "Cannot find device='nope' nor node-name='nope'");
}

TEST_CASE_METHOD(fixture, "drive table checks")
{
    add("n0", 4096, 'a');
    CHECK(g.drives().add(cdrom("0x")).error().desc == "Parameter 'id' expects an identifier");
    CHECK(g.drives().add(cdrom("n0")).error().desc == "Device name 'n0' conflicts with an existing node name");
    CHECK(g.drives().add(cdrom("d", "nope")).error().desc == "Node 'nope' not found");
    REQUIRE(ok(g.drives().add(cdrom("d", "n0"))));
    CHECK(g.drives().add(cdrom("d")).error().desc == "Duplicate ID 'd' for drive");
    CHECK(g.drives().add(cdrom("e", "n0")).error().desc == "Node 'n0' is already in use");
    CHECK(g.drives().get(std::nullopt, std::nullopt).error().desc == "Need exactly one of 'device' and 'id'");
    auto nf = g.drives().get(std::string("x"), std::nullopt);
    CHECK(nf.error().cls == qapi::error_class::device_not_found);
    CHECK(nf.error().desc == "Device 'x' not found");
    REQUIRE(ok(g.drives().del("d")));
    CHECK(g.find("n0")->parents().empty());
    CHECK(g.drives().del("d").error().desc == "Device 'd' not found");
}
