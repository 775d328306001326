// SPDX-License-Identifier: MIT
// The permission transaction node by node: default child permissions, conflicts between the
// users of a node with QEMU's texts, read-only nodes, rollback when a driver refuses halfway,
// attach/replace, force-share; and the file driver's part: auto-read-only reopens and image
// locks as other processes see them.
#include "bjd/block/driver.hpp"
#include "bjd/block/node.hpp"
#include "bjd/io/engine.hpp"

#include <boost/asio/io_context.hpp>

#include "check_result.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

using namespace bjd;
using namespace bjd::block;
namespace asio = boost::asio;
using bjd::test::ok;

namespace {

constexpr unsigned cr = perm_consistent_read, w = perm_write, wu = perm_write_unchanged, rs = perm_resize;

/// A node whose driver part of a permission change is scripted and counted.
class test_node final : public node {
public:
    enum class policy { filter, storage_metadata };

    test_node(std::string name, bool ro = false, policy p = policy::filter, bool force_share = false)
        : node(node_options{.name = std::move(name), .read_only = ro, .force_share = force_share}), policy_(p)
    {
    }
    std::string_view driver() const noexcept override { return "test"; }
    std::uint64_t size() const noexcept override { return 4096; }

    edge& child(std::string role, std::shared_ptr<node> n) { return add_child(std::move(role), std::move(n)); }

    bool refuse = false;   ///< prepare fails
    int prepared = 0, committed = 0, aborted = 0;
    perm_pair last_prepared;

protected:
    perm_pair child_permissions(const edge& c, perm_pair cum) const override
    {
        if (policy_ == policy::storage_metadata && c.role() == "file")
            return storage_child_perms(cum, true, !read_only());
        return node::child_permissions(c, cum);
    }
    qapi::result<void> prepare_permissions(perm_pair cum) override
    {
        if (refuse)
            return qapi::generic("refused by " + name());
        ++prepared;
        last_prepared = cum;
        return {};
    }
    void commit_permissions() override { ++committed; }
    void abort_permissions() override { ++aborted; }

    asio::awaitable<result<void>> do_read(std::uint64_t, std::span<std::byte>) override { co_return result<void>{}; }
    asio::awaitable<result<void>> do_write(std::uint64_t, std::span<const std::byte>, bool) override
    {
        co_return result<void>{};
    }

private:
    policy policy_;
};

std::shared_ptr<test_node> make(std::string name, bool ro = false, test_node::policy p = test_node::policy::filter)
{
    return std::make_shared<test_node>(std::move(name), ro, p);
}

} // namespace

TEST_CASE("default child permissions follow QEMU's bdrv_default_perms")
{
    // Filters pass everything through.
    CHECK(filter_child_perms({cr | w, cr | wu}) == perm_pair{cr | w, cr | wu});
    // A backing file is only read; writing it is shared only when the parents share writing.
    CHECK(cow_child_perms({cr | w | rs, perm_all}) == perm_pair{cr, perm_all});
    CHECK(cow_child_perms({cr | w, cr | wu}) == perm_pair{cr, cr | wu});
    CHECK(cow_child_perms({0, perm_all}) == perm_pair{0, perm_all});
    // A writable format writes and resizes its file even unused, reads it, shares neither.
    CHECK(storage_child_perms({0, perm_all}, true, true) == perm_pair{cr | w | rs, cr | wu});
    CHECK(storage_child_perms({0, perm_all}, true, false) == perm_pair{cr, cr | wu});
    // Data only (raw with a window): nobody else resizes; an unchanged write may still write.
    CHECK(storage_child_perms({wu, perm_all}, false, true) == perm_pair{w | wu | rs, cr | w | wu});
    CHECK(perm_names(cr | w | rs) == "consistent read, write, resize");
}

TEST_CASE("a user that takes what another does not share fails with QEMU's text, changing nothing")
{
    auto n = make("n");
    edge a(parent_kind::anonymous, "mirror job 'j'", "root");
    REQUIRE(ok(a.set_perms(w, wu)));
    REQUIRE(ok(a.attach(n)));
    CHECK(n->held_perm() == w);
    CHECK(n->held_shared() == wu);

    edge b(parent_kind::export_, "export 'e'", "root");
    REQUIRE(ok(b.attach(n)));   // takes nothing: always fine
    auto r = b.set_perms(cr | w, perm_all & ~rs);
    REQUIRE(!r);
    CHECK(r.error().desc ==
          "Permission conflict on node 'n': permissions 'consistent read, write' are both required by an unnamed "
          "block device (uses node 'n' as 'root' child) and unshared by an unnamed block device (uses node 'n' as "
          "'root' child).");
    CHECK(b.perm() == 0);
    CHECK(b.shared_perm() == perm_all);
    CHECK(n->held_perm() == w);
    CHECK(n->held_shared() == wu);

    // The other way round: a new user that does not share what an existing one takes.
    edge c(parent_kind::node, "node 'top'", "file");
    REQUIRE(ok(c.set_perms(0, cr)));
    r = c.attach(n);
    REQUIRE(!r);
    CHECK(r.error().desc ==
          "Permission conflict on node 'n': permissions 'write' are both required by an unnamed block device (uses "
          "node 'n' as 'root' child) and unshared by node 'top' (uses node 'n' as 'file' child).");
    CHECK(!c);
    CHECK(n->parents().size() == 2);

    // Once the first user goes, the second gets what it asked for.
    a.detach();
    CHECK(n->held_perm() == 0);
    REQUIRE(ok(b.set_perms(cr | w, perm_all & ~rs)));
    CHECK(n->held_perm() == (cr | w));
}

TEST_CASE("writers of a read-only node are refused; readers and resizers are not")
{
    auto n = make("ro", true);
    edge e(parent_kind::export_, "export 'e'", "root");
    REQUIRE(ok(e.attach(n)));
    CHECK(e.set_perms(cr | w, perm_all).error().desc == "Block node is read-only");
    CHECK(e.set_perms(wu, perm_all).error().desc == "Block node is read-only");
    CHECK(ok(e.set_perms(cr, perm_all)));
    CHECK(n->held_perm() == cr);
}

TEST_CASE("a driver refusing halfway down rolls back every node above and below")
{
    // top (format with metadata) -> mid (filter) -> bottom; bottom refuses.
    auto bottom = make("bottom");
    auto mid = make("mid");
    auto top = make("top", false, test_node::policy::storage_metadata);
    edge& mid_file = mid->child("file", bottom);
    edge& top_file = top->child("file", mid);
    REQUIRE(ok(top->refresh_permissions()));
    // The format took write and resize on its file without any parent.
    CHECK(top_file.perms() == perm_pair{cr | w | rs, cr | wu});
    CHECK(mid->held_perm() == (cr | w | rs));
    CHECK(bottom->held_perm() == (cr | w | rs));
    CHECK(mid_file.perms() == perm_pair{cr | w | rs, cr | wu});
    const int mid_commits = mid->committed, bottom_commits = bottom->committed;

    bottom->refuse = true;
    // A user sharing nothing changes what every node below may share: all of them prepare.
    edge user(parent_kind::export_, "export 'e'", "root");
    REQUIRE(ok(user.attach(top)));
    auto r = user.set_perms(cr | w, 0);
    REQUIRE(!r);
    CHECK(r.error().desc == "refused by bottom");
    // Nothing moved: the user's edge, the held permissions, the child edges.
    CHECK(user.perm() == 0);
    CHECK(user.shared_perm() == perm_all);
    CHECK(top->held_perm() == 0);
    CHECK(top->held_shared() == perm_all);
    CHECK(top_file.perms() == perm_pair{cr | w | rs, cr | wu});
    CHECK(mid->held_perm() == (cr | w | rs));
    CHECK(mid->held_shared() == (cr | wu));
    CHECK(mid_file.perms() == perm_pair{cr | w | rs, cr | wu});
    // Every driver that prepared was told to abort, none to commit.
    CHECK(top->aborted == 1);
    CHECK(mid->aborted == 1);
    CHECK(mid->last_prepared == perm_pair{cr | w | rs, 0});
    CHECK(mid->committed == mid_commits);
    CHECK(bottom->committed == bottom_commits);

    bottom->refuse = false;
    REQUIRE(ok(user.set_perms(cr | w, 0)));
    CHECK(top->held_perm() == (cr | w));
    CHECK(top->held_shared() == 0);
    CHECK(bottom->held_shared() == 0);
    CHECK(top->committed + top->aborted == top->prepared);   // every prepare ended exactly once
    CHECK(bottom->committed + bottom->aborted == bottom->prepared);
    user.detach();
    CHECK(top->held_perm() == 0);
    CHECK(top->held_shared() == perm_all);
    CHECK(bottom->held_shared() == (cr | wu));
}

TEST_CASE("replace_node moves every parent or none")
{
    auto from = make("from");
    auto to = make("to");
    edge writer(parent_kind::export_, "export 'w'", "root");
    REQUIRE(ok(writer.set_perms(cr | w, perm_all & ~rs)));
    REQUIRE(ok(writer.attach(from)));
    edge reader(parent_kind::export_, "export 'r'", "root");
    REQUIRE(ok(reader.set_perms(cr, perm_all & ~rs)));
    REQUIRE(ok(reader.attach(from)));

    // `to` is written by a job that shares only unchanged writes: the writer cannot move.
    edge job(parent_kind::anonymous, "mirror job 'j'", "root");
    REQUIRE(ok(job.set_perms(w, wu)));
    REQUIRE(ok(job.attach(to)));
    auto r = replace_node(*from, to);
    REQUIRE(!r);
    CHECK(r.error().desc.rfind("Permission conflict on node 'to': ", 0) == 0);
    CHECK(writer.get() == from.get());
    CHECK(reader.get() == from.get());
    CHECK(from->parents().size() == 2);
    CHECK(to->parents().size() == 1);
    CHECK(from->held_perm() == (cr | w));
    CHECK(to->held_perm() == w);

    job.detach();
    REQUIRE(ok(replace_node(*from, to)));
    CHECK(writer.get() == to.get());
    CHECK(reader.get() == to.get());
    CHECK(from->held_perm() == 0);
    CHECK(to->held_perm() == (cr | w));
    CHECK(to->held_shared() == (perm_all & ~rs));
}

TEST_CASE("replace_node leaves a parent that the new node reaches through its children")
{
    // A copy-before-write filter above `src` whose target is a fleecing overlay of `src`
    // (QEMU's should_update_child): the overlay's backing link stays on `src`.
    auto src = make("src");
    auto overlay = make("overlay");
    edge& backing = overlay->child("backing", src);
    auto filter = make("filter");
    filter->child("target", overlay);
    edge user(parent_kind::export_, "export 'e'", "root");
    REQUIRE(ok(user.set_perms(cr, perm_all)));
    REQUIRE(ok(user.attach(src)));

    REQUIRE(ok(replace_node(*src, filter)));
    CHECK(user.get() == filter.get());
    CHECK(backing.get() == src.get());
    CHECK(src->parents().size() == 1);
}

TEST_CASE("force-share lets the parents share everything on the node")
{
    auto n = std::make_shared<test_node>("shared", true, test_node::policy::filter, true);
    auto top = make("top", true);
    edge& c = top->child("file", n);
    edge user(parent_kind::export_, "export 'e'", "root");
    REQUIRE(ok(user.set_perms(cr, cr)));
    REQUIRE(ok(user.attach(top)));
    CHECK(c.perms() == perm_pair{cr, perm_all});
    CHECK(n->held_shared() == perm_all);
}

// ---- the file driver ----------------------------------------------------------------------------

namespace {

struct file_fixture {
    asio::io_context loop;
    std::unique_ptr<io::engine> eng = io::make_engine(loop, io::backend::threads);
    std::string path;

    file_fixture()
    {
        char tmpl[] = "/tmp/bjd-perm-XXXXXX";
        int fd = ::mkstemp(tmpl);
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, 1 << 20) == 0);
        ::close(fd);
        path = tmpl;
    }
    ~file_fixture() { ::unlink(path.c_str()); }

    std::shared_ptr<node> open(bool auto_read_only, bool read_only = false)
    {
        node_options o{.name = "f", .read_only = read_only, .auto_read_only = auto_read_only};
        file_open_options fo;
        fo.filename = path;
        auto n = open_file(o, fo, *eng);
        REQUIRE(ok(n));
        return *n;
    }

    /// The access mode of this process's descriptor of `path` (O_RDONLY/O_RDWR), from /proc.
    int access_mode() const
    {
        for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
            std::error_code ec;
            if (std::filesystem::read_symlink(e.path(), ec) != path)
                continue;
            std::ifstream info("/proc/self/fdinfo/" + e.path().filename().string());
            std::string key, value;
            while (info >> key >> value)
                if (key == "flags:")
                    return static_cast<int>(std::stoul(value, nullptr, 8)) & O_ACCMODE;
        }
        return -1;
    }
};

/// Whether some other open file holds QEMU's lock byte `byte` on `path`.
bool byte_locked(const std::string& path, off_t byte)
{
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    struct flock fl{};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    REQUIRE(::fcntl(fd, F_OFD_GETLK, &fl) == 0);
    ::close(fd);
    return fl.l_type != F_UNLCK;
}

} // namespace

TEST_CASE_METHOD(file_fixture, "auto-read-only files are read-write exactly while a writer is attached")
{
    auto f = open(true);
    CHECK(access_mode() == O_RDONLY);
    edge writer(parent_kind::anonymous, "mirror job 'j'", "root");
    REQUIRE(ok(writer.set_perms(w, wu)));
    REQUIRE(ok(writer.attach(f)));
    CHECK(access_mode() == O_RDWR);
    writer.detach();
    CHECK(access_mode() == O_RDONLY);
    // Without auto-read-only a read-write node stays read-write.
    f.reset();
    auto g = open(false);
    CHECK(access_mode() == O_RDWR);
}

TEST_CASE_METHOD(file_fixture, "image locks follow the users, and a conflict leaves the old locks")
{
    auto f = open(true);
    CHECK(!byte_locked(path, 100));   // nobody uses the node: no lock at all
    edge reader(parent_kind::export_, "export 'e'", "root");
    REQUIRE(ok(reader.set_perms(cr, perm_all & ~rs)));
    REQUIRE(ok(reader.attach(f)));
    CHECK(byte_locked(path, 100));    // consistent read
    CHECK(!byte_locked(path, 101));
    CHECK(byte_locked(path, 203));    // resize not shared

    // Another process holds "I do not share write": a writer cannot come in, and the reader's
    // locks and the read-only descriptor stay as they were.
    int other = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(other >= 0);
    struct flock fl{};
    fl.l_type = F_RDLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 201;
    fl.l_len = 1;
    REQUIRE(::fcntl(other, F_OFD_SETLK, &fl) == 0);
    edge writer(parent_kind::anonymous, "mirror job 'j'", "root");
    REQUIRE(ok(writer.set_perms(w, cr | wu)));
    auto r = writer.attach(f);
    REQUIRE(!r);
    CHECK(r.error().desc == "Failed to get \"write\" lock");
    CHECK(r.error().hint == "Is another process using the image [" + path + "]?");
    CHECK(access_mode() == O_RDONLY);
    CHECK(!byte_locked(path, 101));
    CHECK(byte_locked(path, 100));
    CHECK(byte_locked(path, 203));
    ::close(other);

    REQUIRE(ok(writer.attach(f)));
    CHECK(byte_locked(path, 101));
    CHECK(byte_locked(path, 201));   // the writer shares no write
    CHECK(!byte_locked(path, 200));
    reader.detach();
    writer.detach();
    for (off_t b : {100, 101, 102, 103, 200, 201, 202, 203})
        CHECK(!byte_locked(path, b));
}
