// SPDX-License-Identifier: MIT
#include "bjd/file.hpp"

#include <unistd.h>

#include <cerrno>

namespace bjd {

result<std::string> read_to_end(int fd)
{
    std::string out;
    char buf[65536];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno_error(errno);
        if (n == 0)
            return out;
        out.append(buf, static_cast<std::size_t>(n));
    }
}

} // namespace bjd
