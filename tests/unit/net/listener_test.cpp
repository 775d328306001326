// SPDX-License-Identifier: MIT
#include "bjd/net/listener.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/local/stream_protocol.hpp>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>

using namespace bjd;
namespace asio = boost::asio;

namespace {

struct tmpdir {
    std::filesystem::path dir;
    tmpdir()
    {
        char tmpl[] = "/tmp/bjd-net-XXXXXX";
        dir = ::mkdtemp(tmpl);
    }
    ~tmpdir() { std::filesystem::remove_all(dir); }
    std::string path(const char* name) const { return (dir / name).string(); }
};

mode_t mode_of(const std::string& p)
{
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

bool connects(const std::string& p)
{
    asio::io_context io;
    asio::local::stream_protocol::socket s(io);
    boost::system::error_code ec;
    s.connect(asio::local::stream_protocol::endpoint(p), ec);
    return !ec;
}

struct umask_guard {
    mode_t old;
    explicit umask_guard(mode_t m) : old(::umask(m)) {}
    ~umask_guard() { ::umask(old); }
};

} // namespace

TEST_CASE("a UNIX listener gets the mode asked for and removes its file on close", "[net]")
{
    tmpdir t;
    asio::io_context io;
    auto p = t.path("q.sock");
    auto l = net::open_listener(io, net::listen_address::unix_socket(p, 0640));
    CHECK(mode_of(p) == 0640);
    // Bound under a temporary name and renamed once listening: only the socket is left.
    CHECK(std::distance(std::filesystem::directory_iterator(t.dir), std::filesystem::directory_iterator()) == 1);
    CHECK(l.description == "unix:" + p);
    CHECK_FALSE(l.tcp);
    CHECK(connects(p));
    l.close();
    CHECK_FALSE(std::filesystem::exists(p));
    l.close();   // idempotent
}

TEST_CASE("a world-writable socket is refused, and a umask that would make one is corrected", "[net]")
{
    tmpdir t;
    asio::io_context io;
    auto p = t.path("w.sock");
    try {
        net::open_listener(io, net::listen_address::unix_socket(p, 0666));
        FAIL("mode 0666 was accepted");
    } catch (const std::system_error& e) {
        CHECK(std::string(e.what()).find("world-writable") != std::string::npos);
    }
    CHECK_FALSE(std::filesystem::exists(p));   // nothing left behind
    CHECK(std::filesystem::is_empty(t.dir));   // not even the temporary name
    umask_guard g(0);
    auto l = net::open_listener(io, net::listen_address::unix_socket(p));
    CHECK((mode_of(p) & S_IWOTH) == 0);
    CHECK((mode_of(p) & S_IWUSR) != 0);
}

TEST_CASE("a stale socket is replaced but a regular file never is", "[net]")
{
    tmpdir t;
    asio::io_context io;
    auto p = t.path("s.sock");
    {
        auto l = net::open_listener(io, net::listen_address::unix_socket(p));
        l.owned_path.clear();   // "crash": the file stays behind
    }
    REQUIRE(std::filesystem::is_socket(p));
    auto l2 = net::open_listener(io, net::listen_address::unix_socket(p));
    CHECK(connects(p));

    auto f = t.path("regular");
    std::ofstream(f) << "data";
    CHECK_THROWS_AS(net::open_listener(io, net::listen_address::unix_socket(f)), std::system_error);
    CHECK(std::filesystem::is_regular_file(f));
}

TEST_CASE("owner and group by number or name; unknown names are errors", "[net]")
{
    tmpdir t;
    asio::io_context io;
    auto p = t.path("o.sock");
    auto a = net::listen_address::unix_socket(p, 0660);
    a.owner = std::to_string(::getuid());
    a.group = "root";
    auto l = net::open_listener(io, a);
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    CHECK(st.st_uid == ::getuid());
    CHECK(st.st_gid == 0);
    l.close();
    a.group = "no-such-group-bjd";
    try {
        net::open_listener(io, a);
        FAIL("unknown group accepted");
    } catch (const std::system_error& e) {
        CHECK(std::string(e.what()).find("no-such-group-bjd") != std::string::npos);
    }
    CHECK_FALSE(std::filesystem::exists(p));
}

TEST_CASE("TCP port 0 picks a free loopback port", "[net]")
{
    asio::io_context io;
    auto l = net::open_listener(io, net::listen_address::inet("127.0.0.1", "0"));
    CHECK(l.tcp);
    CHECK(l.loopback_only);
    CHECK(l.port != 0);
    CHECK(l.description == "127.0.0.1:" + std::to_string(l.port));
}

TEST_CASE("an inherited listening socket is adopted; anything else is refused", "[net]")
{
    tmpdir t;
    asio::io_context io;
    auto p = t.path("inh.sock");
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::strcpy(sun.sun_path, p.c_str());
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0);

    // Bound but not listening: refused, and still ours to close.
    CHECK_THROWS_AS(net::open_listener(io, net::listen_address::inherited(fd)), std::system_error);
    REQUIRE(::listen(fd, 8) == 0);
    auto l = net::open_listener(io, net::listen_address::inherited(fd));
    CHECK(l.description == "fd:" + std::to_string(fd) + " (unix:" + p + ")");
    CHECK(connects(p));
    l.close();
    CHECK(std::filesystem::exists(p));   // systemd's socket file is not ours to remove

    int dgram = ::socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK_THROWS_AS(net::open_listener(io, net::listen_address::inherited(dgram)), std::system_error);
    ::close(dgram);
}

TEST_CASE("inherited_fd without socket activation takes open fd numbers only", "[net]")
{
    ::unsetenv("LISTEN_FDS");
    int fd = ::dup(0);
    CHECK(net::inherited_fd(std::to_string(fd)) == fd);
    ::close(fd);
    try {
        net::inherited_fd("qmp");
        FAIL("a name resolved without LISTEN_FDNAMES");
    } catch (const std::system_error& e) {
        CHECK(std::string(e.what()).find("not socket-activated") != std::string::npos);
    }
    CHECK_THROWS_AS(net::inherited_fd("987"), std::system_error);
}
