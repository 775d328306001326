// SPDX-License-Identifier: MIT
// Closing nodes: blockdev-del and close_all flush a node before the graph lets it go, parents
// before children, read-only nodes untouched; the cascade takes orphaned inline children
// only; close_all waits for closes still in progress.
#include "bjd/block/graph.hpp"
#include "bjd/io/engine.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "check_result.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>

using namespace bjd;
using namespace bjd::block;
namespace asio = boost::asio;

using bjd::test::ok;

namespace {

using flush_log = std::vector<std::string>;

/// A node that writes its name to `log` when it is flushed: a stand-in for a format whose
/// metadata lives in memory until flush(). Children are attached as "file", then "backing".
class rec_node final : public node {
public:
    rec_node(std::string name, bool ro, flush_log& log, std::vector<std::shared_ptr<node>> kids)
        : node(std::move(name), ro), log_(log)
    {
        const char* roles[] = {"file", "backing"};
        for (std::size_t i = 0; i < kids.size() && i < 2; ++i)
            add_child(roles[i], std::move(kids[i]));
    }
    std::string_view driver() const noexcept override { return "rec"; }
    std::uint64_t size() const noexcept override { return 4096; }
    bool is_filter() const noexcept override { return filter; }

    asio::steady_timer* gate = nullptr;   ///< when set, flush waits until it is cancelled
    bool fail_flush = false;
    bool filter = false;                  ///< a filter holds nothing: not flushed at close

protected:
    asio::awaitable<result<void>> do_read(std::uint64_t, std::span<std::byte> buf) override
    {
        std::memset(buf.data(), 0, buf.size());
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_write(std::uint64_t, std::span<const std::byte>, bool) override
    {
        co_return result<void>{};
    }
    asio::awaitable<result<void>> do_flush() override
    {
        if (gate)
            co_await gate->async_wait(asio::as_tuple(asio::use_awaitable));
        log_.push_back(name());
        if (fail_flush)
            co_return errno_error(EIO);
        co_return result<void>{};
    }

private:
    flush_log& log_;
};

struct fixture {
    flush_log flushed;   // before the graph: the nodes write to it until they die
    asio::io_context loop;
    std::unique_ptr<io::engine> eng = io::make_engine(loop, io::backend::threads);
    graph g{*eng, *eng};

    /// Registers a node over `kids` (as blockdev-add registers a node and its inline
    /// children); `monitor` marks it monitor-owned.
    std::shared_ptr<rec_node> add(const std::string& name, std::vector<std::shared_ptr<node>> kids = {},
                                  bool monitor = false, bool ro = false)
    {
        auto n = std::make_shared<rec_node>(name, ro, flushed, std::move(kids));
        n->set_monitor_owned(monitor);
        g.insert(n);
        if (!ro)
            touch(*n);
        return n;
    }

    /// A write, so that the node has something a close must flush.
    void touch(node& n)
    {
        std::vector<std::byte> b(512);
        REQUIRE(run(n.write(0, b)));
    }

    template <class T>
    T run(asio::awaitable<T> a)
    {
        auto f = asio::co_spawn(loop, std::move(a), asio::use_future);
        loop.restart();
        loop.run();
        return f.get();
    }
    void run(asio::awaitable<void> a)
    {
        auto f = asio::co_spawn(loop, std::move(a), asio::use_future);
        loop.restart();
        loop.run();
        f.get();
    }
};

} // namespace

TEST_CASE_METHOD(fixture, "blockdev-del flushes a writable node, then its orphaned inline child")
{
    std::weak_ptr<node> file = add("file0");
    std::weak_ptr<node> top = add("top", {file.lock()}, true);

    REQUIRE(ok(run(g.del("top"))));
    CHECK(flushed == flush_log{"top", "file0"});
    CHECK_FALSE(g.find("top"));
    CHECK_FALSE(g.find("file0"));
    CHECK(top.expired());   // released before del answered
    CHECK(file.expired());
}

TEST_CASE_METHOD(fixture, "blockdev-del keeps the checks it had and closes nothing when one fails")
{
    auto file = add("file0", {}, true);
    add("top", {file}, true);
    CHECK(run(g.del("nope")).error().desc == "Failed to find node with node-name='nope'");
    CHECK(run(g.del("file0")).error().desc == "Block device file0 is in use");
    g.find("top")->set_monitor_owned(false);
    CHECK(run(g.del("top")).error().desc == "Node top is not owned by the monitor");
    CHECK(flushed.empty());
    CHECK(g.nodes().size() == 2);
}

TEST_CASE_METHOD(fixture, "read-only nodes are not flushed, but go")
{
    auto file = add("file0", {}, false, true);
    add("top", {file}, true, true);
    file.reset();
    REQUIRE(ok(run(g.del("top"))));
    CHECK(flushed.empty());
    CHECK(g.nodes().empty());
}

TEST_CASE_METHOD(fixture, "the cascade spares monitor-owned children and children with other parents")
{
    auto owned = add("owned", {}, true);          // blockdev-add'ed on its own, used as a child
    auto shared = add("shared");                  // inline child of both tops
    add("top1", {shared, owned}, true);
    add("top2", {shared}, true);
    owned.reset();
    shared.reset();

    REQUIRE(ok(run(g.del("top1"))));
    CHECK(flushed == flush_log{"top1"});
    REQUIRE(g.find("owned"));
    CHECK(g.find("owned")->parents().empty());
    REQUIRE(g.find("shared"));
    CHECK(g.find("shared")->parents().size() == 1);

    REQUIRE(ok(run(g.del("top2"))));   // the last parent: now the child goes too
    CHECK(flushed == flush_log{"top1", "top2", "shared"});
    CHECK_FALSE(g.find("shared"));

    REQUIRE(ok(run(g.del("owned"))));
    CHECK(flushed == flush_log{"top1", "top2", "shared", "owned"});
    CHECK(g.nodes().empty());
}

TEST_CASE_METHOD(fixture, "a child shared inside the closing subtree goes after its last parent")
{
    // top -> {fmt, base}, fmt -> {file0, base}: base is listed after both of its parents.
    auto base = add("base");
    auto file = add("file0");
    auto fmt = add("fmt", {file, base});
    add("top", {fmt, base}, true);
    base.reset();
    file.reset();
    fmt.reset();
    REQUIRE(ok(run(g.del("top"))));
    REQUIRE(flushed.size() == 4);
    auto at = [&](const char* n) { return std::find(flushed.begin(), flushed.end(), n) - flushed.begin(); };
    CHECK(at("top") == 0);
    CHECK(at("fmt") < at("file0"));
    CHECK(at("fmt") < at("base"));
    CHECK(g.nodes().empty());
}

TEST_CASE_METHOD(fixture, "a failed flush is logged and the node goes anyway")
{
    auto file = add("file0");
    auto top = add("top", {file}, true);
    top->fail_flush = true;
    std::weak_ptr<node> weak = top;
    top.reset();
    file.reset();
    REQUIRE(ok(run(g.del("top"))));
    CHECK(flushed == flush_log{"top", "file0"});
    CHECK(weak.expired());
    CHECK(g.nodes().empty());
}

TEST_CASE_METHOD(fixture, "close leaves a node that still has parents alone")
{
    auto file = add("file0");
    add("top", {file}, true);
    run(g.close(file));
    CHECK(flushed.empty());
    CHECK(g.find("file0") == file);
}

TEST_CASE_METHOD(fixture, "close_all flushes every writable node, parents before children")
{
    // Registered children first, as graph::open does.
    auto base_file = add("base-file");
    auto base = add("base", {base_file}, false, true);   // read-only backing format
    auto file = add("file0");
    auto fmt = add("fmt", {file, base}, true);
    auto lone = add("lone", {}, true);
    auto top = add("top", {fmt}, true);
    auto filter = add("filter", {top}, true);
    filter->filter = true;

    run(g.close_all());
    // Kahn's order, creation order among the ready: lone, filter (holds nothing: skipped),
    // top, fmt, base (read-only: skipped), base-file, file0. base-file is writable below a
    // read-only node: flushed.
    CHECK(flushed == flush_log{"lone", "top", "fmt", "base-file", "file0"});
    CHECK(g.nodes().size() == 7);   // flushed, not dropped: the destructor does that
}

TEST_CASE_METHOD(fixture, "close_all waits for a close still in progress")
{
    asio::steady_timer gate(loop, asio::steady_timer::time_point::max());
    auto file = add("file0");
    auto top = add("top", {file});
    add("other", {}, true);
    top->gate = &gate;
    g.close_later(loop.get_executor(), top);
    CHECK_FALSE(g.find("top"));   // out of the graph at once
    CHECK_FALSE(g.find("file0"));
    file.reset();
    std::weak_ptr<node> weak = top;
    top.reset();

    auto done = asio::co_spawn(loop, g.close_all(), asio::use_future);
    loop.restart();
    loop.poll();
    CHECK(flushed.empty());   // top's flush is held; close_all must not have gone on
    CHECK(done.wait_for(std::chrono::seconds(0)) != std::future_status::ready);

    gate.cancel();
    loop.restart();
    loop.run();
    done.get();
    CHECK(flushed == flush_log{"top", "file0", "other"});
    CHECK(weak.expired());
}

TEST_CASE_METHOD(fixture, "a node with nothing written since its last flush is let go without one")
{
    std::weak_ptr<node> file = add("file0");
    auto top = add("top", {file.lock()});
    REQUIRE(run(top->flush()));
    REQUIRE(run(file.lock()->flush()));
    flushed.clear();

    // A job callback cannot wait: with nothing to write back the nodes go at once, so their
    // image locks are free before the job's events are sent.
    g.close_later(loop.get_executor(), std::move(top));
    CHECK(file.expired());
    CHECK_FALSE(g.find("top"));
    CHECK(flushed.empty());

    // A write after the flush makes the next close flush again.
    auto a = add("a");
    REQUIRE(run(a->flush()));
    touch(*a);
    flushed.clear();
    g.close_later(loop.get_executor(), std::move(a));
    loop.restart();
    loop.run();
    CHECK(flushed == flush_log{"a"});
}
