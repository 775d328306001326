// SPDX-License-Identifier: MIT
// The QMP server on real sockets: greeting, negotiation, ordered requests, event broadcast
// only to negotiated sessions, vanishing clients, garbage input, quit flushing, TCP.
#include "bjd/qmp/server.hpp"

#include "bjd/qmp/context.hpp"
#include "bjd/qmp/session.hpp"
#include "bjd/qmp/version.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/json/object.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <string>
#include <thread>

namespace json = boost::json;
namespace qapi = bjd::qapi;
namespace qmp = bjd::qmp;
using namespace std::chrono_literals;

namespace {

std::atomic<int> slow_done{0};

boost::asio::awaitable<qapi::result<json::value>> t_caps(qmp::context& ctx, const json::object&)
{
    ctx.current->state().command_mode = true;
    co_return json::value(json::object{});
}

boost::asio::awaitable<qapi::result<json::value>> t_echo(qmp::context&, const json::object& args)
{
    co_return json::value(args);
}

/// Emits an event (before answering, as job commands do).
boost::asio::awaitable<qapi::result<json::value>> t_emit(qmp::context& ctx, const json::object& args)
{
    ctx.events.emit("TEST_EVENT", args);
    co_return json::value(json::object{});
}

boost::asio::awaitable<qapi::result<json::value>> t_slow(qmp::context& ctx, const json::object&)
{
    boost::asio::steady_timer t(ctx.loop, 300ms);
    co_await t.async_wait(boost::asio::use_awaitable);
    ++slow_done;
    co_return json::value(json::object{});
}

boost::asio::awaitable<qapi::result<json::value>> t_quit(qmp::context& ctx, const json::object&)
{
    qmp::context* c = &ctx;
    boost::asio::post(ctx.loop, [c] { c->request_quit(); });
    co_return json::value(json::object{});
}

const qapi::command_def table[] = {
    {"qmp_capabilities", false, &t_caps}, {"echo", false, &t_echo}, {"emit", false, &t_emit},
    {"slow", false, &t_slow},             {"quit", false, &t_quit},
};

/// A blocking test client.
class client {
public:
    explicit client(const std::string& path)
    {
        fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        path.copy(sa.sun_path, sizeof sa.sun_path - 1);
        REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    }
    explicit client(std::uint16_t tcp_port)
    {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(tcp_port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    }
    ~client() { close(); }

    void close()
    {
        if (fd_ >= 0) {
            ::close(fd_);
            fd_ = -1;
        }
    }

    void send(std::string_view s)
    {
        while (!s.empty()) {
            ssize_t n = ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL);
            REQUIRE(n > 0);
            s.remove_prefix(static_cast<std::size_t>(n));
        }
    }

    /// The next line without its CR LF; "" on timeout, "<EOF>" at end of stream.
    std::string line(std::chrono::milliseconds timeout = 5000ms)
    {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            auto pos = buf_.find("\r\n");
            if (pos != std::string::npos) {
                std::string l = buf_.substr(0, pos);
                buf_.erase(0, pos + 2);
                return l;
            }
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) {
                return "";
            }
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
                return "";
            }
            char tmp[65536];
            ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
            if (n <= 0) {
                return "<EOF>";
            }
            buf_.append(tmp, static_cast<std::size_t>(n));
        }
    }

    std::string cmd(std::string_view req)
    {
        send(req);
        return line();
    }

private:
    int fd_ = -1;
    std::string buf_;
};

struct null_sink : qapi::event_sink {
    void emit(std::string_view, json::object) override {}
};

struct fixture {
    std::filesystem::path dir;
    std::string path;
    boost::asio::io_context loop;
    qmp::server srv{loop, table};
    qmp::context ctx{loop, srv};
    std::thread thread;
    std::promise<void> quit_done;

    fixture()
    {
        char tmpl[] = "/tmp/bjd-qmp-test-XXXXXX";
        REQUIRE(::mkdtemp(tmpl));
        dir = tmpl;
        path = (dir / "qmp.sock").string();
        srv.attach(ctx);
        ctx.request_quit = [this] {
            boost::asio::co_spawn(loop, srv.shutdown(), [this](std::exception_ptr) { quit_done.set_value(); });
        };
    }
    void start()
    {
        thread = std::thread([this] {
            auto guard = boost::asio::make_work_guard(loop);
            loop.run();
        });
    }
    ~fixture()
    {
        loop.stop();
        if (thread.joinable()) {
            thread.join();
        }
        std::filesystem::remove_all(dir);
    }

    /// Runs `fn` on the loop thread and waits for it.
    template <class F>
    void on_loop(F fn)
    {
        std::promise<void> done;
        boost::asio::post(loop, [&] {
            fn();
            done.set_value();
        });
        done.get_future().wait();
    }
};

std::string greeting()
{
    return R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "blockjobd )" +
           std::string(BJD_VERSION) + R"("}, "capabilities": ["oob"]}})";
}

} // namespace

TEST_CASE("server: greeting, negotiation and ordered requests", "[server]")
{
    fixture f;
    f.srv.listen(qmp::listen_address::unix_socket(f.path, 0600));
    f.start();
    struct stat st {};
    REQUIRE(::stat(f.path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);

    client a(f.path);
    CHECK(a.line() == greeting());
    CHECK(a.cmd(R"({"execute":"echo","id":1})") ==
          R"({"id": 1, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}})");
    CHECK(a.cmd(R"({"execute":"qmp_capabilities"})") == R"({"return": {}})");
    // Several requests in one write, a slow one first: answered strictly in order.
    a.send(R"({"execute":"slow","id":1}{"execute":"echo","id":2} {"execute":"echo","arguments":{"a":1},"id":3})");
    CHECK(a.line() == R"({"return": {}, "id": 1})");
    CHECK(a.line() == R"({"return": {}, "id": 2})");
    CHECK(a.line() == R"({"return": {"a": 1}, "id": 3})");
}

TEST_CASE("server: events reach only negotiated sessions", "[server]")
{
    fixture f;
    f.srv.listen(qmp::listen_address::unix_socket(f.path));
    f.start();
    client a(f.path);
    client b(f.path);
    CHECK(a.line() == greeting());
    CHECK(b.line() == greeting());
    CHECK(a.cmd(R"({"execute":"qmp_capabilities"})") == R"({"return": {}})");

    f.on_loop([&] { f.srv.emit("TEST_EVENT", json::object{{"x", 1}}); });
    std::string ev = a.line();
    CHECK(ev.rfind(R"({"timestamp": {"seconds": )", 0) == 0);
    CHECK(ev.find(R"(, "microseconds": )") != std::string::npos);
    CHECK(ev.find(R"(}, "event": "TEST_EVENT", "data": {"x": 1}})") != std::string::npos);
    f.on_loop([&] { f.srv.emit("NO_DATA", {}); });
    ev = a.line();
    CHECK(ev.find(R"("event": "NO_DATA"})") != std::string::npos);
    CHECK(ev.find("data") == std::string::npos);

    // b was negotiating: nothing was queued for it.
    CHECK(b.line(200ms) == "");
    CHECK(b.cmd(R"({"execute":"qmp_capabilities"})") == R"({"return": {}})");
    // An event emitted by a command precedes that command's response, and reaches both.
    CHECK(b.cmd(R"({"execute":"emit","arguments":{"y":2},"id":"e"})").find(R"("event": "TEST_EVENT", "data": {"y": 2})") !=
          std::string::npos);
    CHECK(b.line() == R"({"return": {}, "id": "e"})");
    CHECK(a.line().find(R"("data": {"y": 2})") != std::string::npos);
}

TEST_CASE("server: a client vanishing mid-command harms nobody", "[server]")
{
    fixture f;
    f.srv.listen(qmp::listen_address::unix_socket(f.path));
    f.start();
    client b(f.path);
    CHECK(b.line() == greeting());
    CHECK(b.cmd(R"({"execute":"qmp_capabilities"})") == R"({"return": {}})");
    int before = slow_done.load();
    {
        client a(f.path);
        CHECK(a.line() == greeting());
        CHECK(a.cmd(R"({"execute":"qmp_capabilities"})") == R"({"return": {}})");
        a.send(R"({"execute":"slow"})");
        std::this_thread::sleep_for(50ms);
    }   // a closes while "slow" runs
    std::this_thread::sleep_for(500ms);
    CHECK(slow_done.load() == before + 1);   // the command finished; its response went nowhere
    CHECK(b.cmd(R"({"execute":"echo","id":9})") == R"({"return": {}, "id": 9})");
    std::size_t n = 0;
    f.on_loop([&] { n = f.srv.session_count(); });
    CHECK(n == 1);
}

TEST_CASE("server: garbage, deep nesting and the wedge keep the connection usable", "[server]")
{
    fixture f;
    f.srv.listen(qmp::listen_address::unix_socket(f.path));
    f.start();
    client a(f.path);
    CHECK(a.line() == greeting());
    CHECK(a.cmd(R"({"execute":"qmp_capabilities"})") == R"({"return": {}})");

    a.send(std::string(1 << 20, 'z') + "\n");
    std::string e = a.line();
    CHECK(e.rfind(R"({"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'zzz)", 0) == 0);
    CHECK(a.cmd(R"({"execute":"echo","id":1})") == R"({"return": {}, "id": 1})");

    a.send(std::string(1025, '{') + "\x01");
    CHECK(a.line() == R"({"error": {"class": "GenericError", "desc": "JSON nesting depth limit exceeded"}})");
    CHECK(a.line() == R"({"error": {"class": "GenericError", "desc": "JSON parse error, stray '\u0001'"}})");

    a.send(R"({"id":[1,})");
    CHECK(a.line(200ms) == "");   // wedged: no answer
    a.send("\x01");
    CHECK(a.line() == R"({"error": {"class": "GenericError", "desc": "JSON parse error, stray '\u0001'"}})");
    CHECK(a.cmd("\n{'execute':'echo','id':2}") == R"({"return": {}, "id": 2})");
}

TEST_CASE("server: quit's response is flushed before shutdown completes", "[server]")
{
    fixture f;
    f.srv.listen(qmp::listen_address::unix_socket(f.path));
    f.start();
    client a(f.path);
    client b(f.path);
    CHECK(a.line() == greeting());
    CHECK(b.line() == greeting());
    CHECK(a.cmd(R"({"execute":"qmp_capabilities"})") == R"({"return": {}})");
    CHECK(a.cmd(R"({"execute":"quit","id":"q"})") == R"({"return": {}, "id": "q"})");
    REQUIRE(f.quit_done.get_future().wait_for(5s) == std::future_status::ready);
    CHECK(a.line() == "<EOF>");
    CHECK(b.line() == "<EOF>");
    CHECK(!std::filesystem::exists(f.path));   // the socket file is removed
}

TEST_CASE("server: stale socket file and TCP on loopback", "[server]")
{
    fixture f;
    // A stale socket left by a previous run.
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    f.path.copy(sa.sun_path, sizeof sa.sun_path - 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    ::close(fd);
    f.srv.listen(qmp::listen_address::unix_socket(f.path));
    std::uint16_t port = f.srv.listen(qmp::listen_address::inet("127.0.0.1", "0"));
    REQUIRE(port != 0);
    f.start();
    client u(f.path);
    CHECK(u.line() == greeting());
    client t(port);
    CHECK(t.line() == greeting());
    CHECK(t.cmd(R"({"execute":"qmp_capabilities","id":0})") == R"({"return": {}, "id": 0})");
    // A regular file is never removed.
    std::string regular = (f.dir / "file").string();
    { std::FILE* fp = std::fopen(regular.c_str(), "w"); std::fclose(fp); }
    CHECK_THROWS_AS(f.srv.listen(qmp::listen_address::unix_socket(regular)), std::system_error);
    CHECK(std::filesystem::exists(regular));
}

TEST_CASE("server: the real control commands", "[server]")
{
    boost::asio::io_context loop;
    std::filesystem::path dir = std::filesystem::temp_directory_path() / ("bjd-qmp-ctl-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "s").string();
    const std::string path_nooob = (dir / "n").string();
    qmp::server srv(loop);   // the generated table
    qmp::server nooob(loop, qapi::command_table(), qmp::server_options{false, false});
    qmp::context ctx{loop, srv};
    srv.attach(ctx);
    nooob.attach(ctx);
    srv.listen(qmp::listen_address::unix_socket(path));
    nooob.listen(qmp::listen_address::unix_socket(path_nooob));
    std::thread th([&] {
        auto guard = boost::asio::make_work_guard(loop);
        loop.run();
    });

    {
        client a(path);
        CHECK(a.line() == greeting());
        CHECK(a.cmd(R"({"execute":"query-version","id":0})") ==
              R"({"id": 0, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}})");
        CHECK(a.cmd(R"({"execute":"qmp_capabilities","arguments":{"enable":["foo"]},"id":1})") ==
              R"({"id": 1, "error": {"class": "GenericError", "desc": "Parameter 'null' does not accept value 'foo'"}})");
        CHECK(a.cmd(R"({"execute":"qmp_capabilities","arguments":{"enable":"oob"},"id":1})") ==
              R"({"id": 1, "error": {"class": "GenericError", "desc": "Invalid parameter type for 'enable', expected: array"}})");
        CHECK(a.cmd(R"({"execute":"qmp_capabilities","arguments":{"enable":["oob","oob"]},"id":2})") ==
              R"({"return": {}, "id": 2})");
        CHECK(a.cmd(R"({"execute":"qmp_capabilities","id":3})") ==
              R"({"id": 3, "error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}})");
        CHECK(a.cmd(R"({"exec-oob":"query-version","id":4})") ==
              R"({"id": 4, "error": {"class": "GenericError", "desc": "The command query-version does not support OOB"}})");
        CHECK(a.cmd(R"({"execute":"query-version"})") ==
              R"({"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "blockjobd )" +
                  std::string(BJD_VERSION) + R"("}})");
        std::string cmds = a.cmd(R"({"execute":"query-commands"})");
        for (const auto& c : qapi::command_table()) {
            CHECK(cmds.find(R"({"name": ")" + std::string(c.name) + R"("})") != std::string::npos);
        }
        CHECK(a.cmd(R"({"execute":"query-qmp-schema"})").rfind(R"({"return": [{)", 0) == 0);
        CHECK(a.cmd(R"({"execute":"query-version","arguments":{"x":1}})") ==
              R"({"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}})");
    }
    {
        client n(path_nooob);
        CHECK(n.line() == R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "blockjobd )" +
                              std::string(BJD_VERSION) + R"("}, "capabilities": []}})");
        CHECK(n.cmd(R"({"execute":"qmp_capabilities","arguments":{"enable":["oob"]}})") ==
              R"({"error": {"class": "GenericError", "desc": "Capability oob not available"}})");
        CHECK(n.cmd(R"({"execute":"qmp_capabilities"})") == R"({"return": {}})");
    }
    loop.stop();
    th.join();
    std::filesystem::remove_all(dir);
}
