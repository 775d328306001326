// SPDX-License-Identifier: MIT
/// \file
/// Listening sockets: UNIX, TCP and inherited (systemd socket activation).
#include "bjd/net/listener.hpp"

#include "bjd/log.hpp"

#include <systemd/sd-daemon.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <system_error>

namespace bjd::net {

namespace asio = boost::asio;
using generic_proto = asio::generic::stream_protocol;

namespace {

[[noreturn]] void fail(int err, const std::string& what)
{
    throw std::system_error(err, std::generic_category(), what);
}

[[noreturn]] void fail(const boost::system::error_code& ec, const std::string& what)
{
    fail(ec.value(), what);
}

std::string address_text(const sockaddr* sa)
{
    char host[INET6_ADDRSTRLEN] = {};
    if (sa->sa_family == AF_INET6) {
        const auto* s6 = reinterpret_cast<const sockaddr_in6*>(sa);
        ::inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
        return std::string("[") + host + "]:" + std::to_string(ntohs(s6->sin6_port));
    }
    const auto* s4 = reinterpret_cast<const sockaddr_in*>(sa);
    ::inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
    return std::string(host) + ":" + std::to_string(ntohs(s4->sin_port));
}

std::uint16_t port_of(const sockaddr* sa)
{
    return sa->sa_family == AF_INET6 ? ntohs(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port)
                                     : ntohs(reinterpret_cast<const sockaddr_in*>(sa)->sin_port);
}

bool is_loopback(const sockaddr* sa)
{
    if (sa->sa_family == AF_INET6) {
        const auto& a = reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(&a) ||
               (IN6_IS_ADDR_V4MAPPED(&a) && a.s6_addr[12] == 127);
    }
    return (ntohl(reinterpret_cast<const sockaddr_in*>(sa)->sin_addr.s_addr) >> 24) == 127;
}

/// A user or group given by name or number.
template <class Lookup>
long resolve_id(const std::string& spec, const char* what, Lookup lookup)
{
    char* end = nullptr;
    errno = 0;
    long n = std::strtol(spec.c_str(), &end, 10);
    if (!spec.empty() && *end == '\0' && errno == 0 && n >= 0)
        return n;
    long id = lookup(spec.c_str());
    if (id < 0)
        fail(ENOENT, std::string("Unknown ") + what + " '" + spec + "'");
    return id;
}

/// `file` is where the socket is bound right now (a temporary name until it listens).
void apply_ownership(const listen_address& addr, const std::string& file)
{
    if (addr.owner.empty() && addr.group.empty())
        return;
    uid_t uid = static_cast<uid_t>(-1);
    gid_t gid = static_cast<gid_t>(-1);
    if (!addr.owner.empty())
        uid = static_cast<uid_t>(resolve_id(addr.owner, "user", [](const char* n) -> long {
            const passwd* p = ::getpwnam(n);
            return p ? static_cast<long>(p->pw_uid) : -1;
        }));
    if (!addr.group.empty())
        gid = static_cast<gid_t>(resolve_id(addr.group, "group", [](const char* n) -> long {
            const group* g = ::getgrnam(n);
            return g ? static_cast<long>(g->gr_gid) : -1;
        }));
    if (::chown(file.c_str(), uid, gid) != 0)
        fail(errno, "Failed to change the owner of " + addr.path);
}

/// Sets the socket file's mode, and never leaves it writable (connectable) by everyone.
void apply_mode(const listen_address& addr, const std::string& file)
{
    if (addr.mode) {
        if (*addr.mode & ~07777u)
            fail(EINVAL, "Socket mode " + std::to_string(*addr.mode) + " is not a permission mode");
        if (*addr.mode & S_IWOTH)
            fail(EPERM, "Refusing to make socket " + addr.path +
                            " world-writable (any local user could control the daemon); use owner=/group=");
        if (::chmod(file.c_str(), static_cast<mode_t>(*addr.mode)) != 0)
            fail(errno, "Failed to change the mode of " + addr.path);
        return;
    }
    struct stat st {};
    if (::stat(file.c_str(), &st) == 0 && (st.st_mode & S_IWOTH)) {
        // A umask of 0 or 002 would let every local user connect.
        mode_t m = st.st_mode & 07777 & ~static_cast<mode_t>(S_IWOTH);
        if (::chmod(file.c_str(), m) != 0)
            fail(errno, "Failed to change the mode of " + addr.path);
        log::get("net")->warn("socket {}: the umask made it world-writable; removed write access for others",
                              addr.path);
    }
}

listener open_unix(asio::io_context& loop, const listen_address& addr)
{
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    if (addr.path.empty())
        fail(EINVAL, "UNIX socket path is empty");
    if (addr.path.size() >= sizeof sun.sun_path)
        fail(ENAMETOOLONG, "UNIX socket path '" + addr.path + "' is too long");
    // Bound under a temporary name and renamed into place once it listens with its final
    // permissions: whoever waits for the path to appear (a supervisor, a test) can connect at
    // once, never getting ECONNREFUSED from a socket that is bound but not yet listening.
    std::string tmp = addr.path + ".tmp" + std::to_string(::getpid());
    if (tmp.size() >= sizeof sun.sun_path)
        tmp = addr.path;   // no room for a temporary name: bind in place
    std::memcpy(sun.sun_path, tmp.data(), tmp.size());
    if (tmp != addr.path)
        ::unlink(tmp.c_str());
    // Like QEMU, replace a stale socket left by an earlier run (never a regular file).
    struct stat st {};
    if (::lstat(addr.path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))   // what bind() in place would say; never renamed over
            fail(EADDRINUSE, "Failed to bind socket to " + addr.path);
        ::unlink(addr.path.c_str());
    }
    listener l;
    acceptor acc(loop);
    boost::system::error_code ec;
    acc.open(generic_proto(AF_UNIX, 0), ec);
    if (!ec)
        acc.bind(generic_proto::endpoint(&sun, sizeof sun), ec);
    if (ec)
        fail(ec, "Failed to bind socket to " + addr.path);
    l.owned_path = tmp;
    try {
        // Before listen(): nobody can connect until the permissions are final.
        apply_ownership(addr, tmp);
        apply_mode(addr, tmp);
    } catch (...) {
        l.acceptors.push_back(std::move(acc));
        l.close();
        throw;
    }
    acc.listen(asio::socket_base::max_listen_connections, ec);
    if (!ec && tmp != addr.path && ::rename(tmp.c_str(), addr.path.c_str()) != 0)
        ec.assign(errno, boost::system::system_category());
    if (ec) {
        l.acceptors.push_back(std::move(acc));
        l.close();
        fail(ec, "Failed to listen on socket " + addr.path);
    }
    l.owned_path = addr.path;
    l.acceptors.push_back(std::move(acc));
    l.description = "unix:" + addr.path;
    return l;
}

listener open_inet(asio::io_context& loop, const listen_address& addr)
{
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* res = nullptr;
    const char* host = addr.host.empty() ? nullptr : addr.host.c_str();
    const std::string port = addr.port.empty() ? "0" : addr.port;
    if (int rc = ::getaddrinfo(host, port.c_str(), &hints, &res); rc != 0)
        fail(EINVAL, "address resolution failed for " + addr.host + ":" + port + ": " + ::gai_strerror(rc));
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);
    listener l;
    l.tcp = true;
    boost::system::error_code ec;
    int last = EADDRNOTAVAIL;
    // The first address that works, like QEMU's inet_listen.
    for (addrinfo* ai = res; ai && l.acceptors.empty(); ai = ai->ai_next) {
        acceptor acc(loop);
        acc.open(generic_proto(ai->ai_family, ai->ai_protocol), ec);
        if (!ec)
            acc.set_option(asio::socket_base::reuse_address(true), ec);
        if (!ec)
            acc.bind(generic_proto::endpoint(ai->ai_addr, ai->ai_addrlen), ec);
        if (!ec)
            acc.listen(asio::socket_base::max_listen_connections, ec);
        if (ec) {
            last = ec.value();
            continue;
        }
        auto local = acc.local_endpoint(ec);
        const auto* sa = reinterpret_cast<const sockaddr*>(local.data());
        l.description = address_text(sa);
        l.port = port_of(sa);
        l.loopback_only = is_loopback(sa);
        l.acceptors.push_back(std::move(acc));
    }
    if (l.acceptors.empty())
        fail(last, "Failed to bind socket");   // QEMU's words
    return l;
}

listener adopt_fd(asio::io_context& loop, const listen_address& addr)
{
    int type = 0, listening = 0;
    socklen_t len = sizeof type;
    if (::getsockopt(addr.fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
        fail(errno, "fd " + std::to_string(addr.fd) + " is not a socket");
    len = sizeof listening;
    if (type != SOCK_STREAM || ::getsockopt(addr.fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening)
        fail(EINVAL, "fd " + std::to_string(addr.fd) + " is not a listening stream socket");
    sockaddr_storage ss{};
    len = sizeof ss;
    if (::getsockname(addr.fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
        fail(errno, "fd " + std::to_string(addr.fd) + ": getsockname failed");
    listener l;
    acceptor acc(loop);
    boost::system::error_code ec;
    const int family = ss.ss_family;
    acc.assign(generic_proto(family, 0), addr.fd, ec);
    if (ec)
        fail(ec, "Failed to adopt fd " + std::to_string(addr.fd));
    ::fcntl(addr.fd, F_SETFD, FD_CLOEXEC);
    const auto* sa = reinterpret_cast<const sockaddr*>(&ss);
    if (family == AF_INET || family == AF_INET6) {
        l.tcp = true;
        l.port = port_of(sa);
        l.loopback_only = is_loopback(sa);
        l.description = "fd:" + std::to_string(addr.fd) + " (" + address_text(sa) + ")";
    } else {
        const auto* sun = reinterpret_cast<const sockaddr_un*>(&ss);
        l.description = "fd:" + std::to_string(addr.fd) + " (unix:" + std::string(sun->sun_path) + ")";
    }
    l.acceptors.push_back(std::move(acc));
    return l;
}

/// What systemd passed: LISTEN_FDS / LISTEN_FDNAMES, read once and removed from the
/// environment so children do not inherit them.
struct activation {
    bool activated = false;
    int count = 0;
    std::map<std::string, int> by_name;
};

const activation& systemd_fds()
{
    static activation a;
    static std::once_flag once;
    std::call_once(once, [] {
        char** names = nullptr;
        int n = ::sd_listen_fds_with_names(1, &names);
        if (n <= 0)
            return;
        a.activated = true;
        a.count = n;
        for (int i = 0; i < n; ++i) {
            if (names && names[i])
                a.by_name.emplace(names[i], SD_LISTEN_FDS_START + i);
        }
        if (names) {
            for (int i = 0; names[i]; ++i)
                std::free(names[i]);
            std::free(names);
        }
    });
    return a;
}

} // namespace

listen_address listen_address::unix_socket(std::string path, std::optional<unsigned> mode)
{
    listen_address a;
    a.type = kind::unix_socket;
    a.path = std::move(path);
    a.mode = mode;
    return a;
}

listen_address listen_address::inet(std::string host, std::string port)
{
    listen_address a;
    a.type = kind::inet;
    a.host = std::move(host);
    a.port = std::move(port);
    return a;
}

listen_address listen_address::inherited(int fd)
{
    listen_address a;
    a.type = kind::fd;
    a.fd = fd;
    return a;
}

void listener::close() noexcept
{
    for (auto& a : acceptors) {
        boost::system::error_code ec;
        a.close(ec);
    }
    if (!owned_path.empty()) {
        ::unlink(owned_path.c_str());
        owned_path.clear();
    }
}

listener open_listener(asio::io_context& loop, const listen_address& addr)
{
    switch (addr.type) {
    case listen_address::kind::unix_socket: return open_unix(loop, addr);
    case listen_address::kind::inet: return open_inet(loop, addr);
    case listen_address::kind::fd: return adopt_fd(loop, addr);
    }
    fail(EINVAL, "unknown address kind");
}

int inherited_fd(const std::string& spec)
{
    const activation& a = systemd_fds();
    if (auto it = a.by_name.find(spec); it != a.by_name.end())
        return it->second;
    char* end = nullptr;
    errno = 0;
    long n = std::strtol(spec.c_str(), &end, 10);
    const bool numeric = !spec.empty() && *end == '\0' && errno == 0;
    if (numeric && a.activated && n >= SD_LISTEN_FDS_START && n < SD_LISTEN_FDS_START + a.count)
        return static_cast<int>(n);
    if (numeric && !a.activated && n >= 0 && ::fcntl(static_cast<int>(n), F_GETFD) != -1)
        return static_cast<int>(n);
    std::string have;
    if (a.activated) {
        have = "systemd passed fds " + std::to_string(SD_LISTEN_FDS_START) + ".." +
               std::to_string(SD_LISTEN_FDS_START + a.count - 1);
        if (!a.by_name.empty()) {
            have += ", named";
            for (const auto& [name, fd] : a.by_name)
                have += " '" + name + "'";
        }
    } else {
        have = "the daemon was not socket-activated (no LISTEN_FDS)";
    }
    fail(EBADF, "No file descriptor '" + spec + "': " + have);
}

} // namespace bjd::net
