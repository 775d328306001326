// SPDX-License-Identifier: MIT
// Choosing a backend: the io_uring probe, the explanation of why it failed, and the loud
// fallback to the thread pool.
#include "engine_base.hpp"

#include "bjd/log.hpp"

#include <liburing.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string_view>

namespace bjd::io {

bool clone_refused(const std::error_code& ec) noexcept
{
    const int e = ec.value();
    return ec.category() == std::generic_category() && (e == EOPNOTSUPP || e == EXDEV || e == EINVAL);
}

const char* to_string(backend b) noexcept
{
    switch (b) {
    case backend::io_uring:
        return "io_uring";
    case backend::threads:
        return "threads";
    }
    return "unknown";
}

namespace detail {

int forced_uring_failure()
{
    const char* v = std::getenv("BJD_FORCE_URING_FAILURE");
    if (!v || !*v)
        return 0;
    std::string_view s(v);
    if (s == "EPERM")
        return EPERM;
    if (s == "ENOSYS")
        return ENOSYS;
    if (s == "ENOMEM")
        return ENOMEM;
    int e = std::atoi(v);
    return e > 0 ? e : EPERM; // an unknown name still forces a failure rather than none
}

std::string explain_uring_failure(int e)
{
    std::string head = std::string("io_uring_setup failed with ") + std::strerror(e) + ": ";
    switch (e) {
    case EPERM: {
        int disabled = -1;
        std::ifstream f("/proc/sys/kernel/io_uring_disabled");
        f >> disabled;
        if (disabled == 2)
            return head + "io_uring is disabled system-wide (kernel.io_uring_disabled=2); "
                          "set the sysctl to 0 or use aio=threads";
        if (disabled == 1)
            return head + "io_uring is limited to members of kernel.io_uring_group "
                          "(kernel.io_uring_disabled=1); add the daemon's user to that group, "
                          "set the sysctl to 0, or use aio=threads";
        return head + "refused by a seccomp filter or security module (kernel.io_uring_disabled is " +
               (disabled < 0 ? std::string("absent") : std::to_string(disabled)) +
               "); allow io_uring_setup/io_uring_enter/io_uring_register in the sandbox or "
               "container profile, or use aio=threads";
    }
    case ENOSYS:
        return head + "the kernel has no io_uring (older than 5.1 or built without "
                      "CONFIG_IO_URING) or a seccomp filter (e.g. a container's default profile) "
                      "hides it; allow the io_uring syscalls or use aio=threads";
    case ENOMEM:
        return head + "the ring does not fit in the locked-memory limit (kernels before 5.12 "
                      "charge it to RLIMIT_MEMLOCK); raise LimitMEMLOCK/ulimit -l, lower the "
                      "queue depth, or use aio=threads";
    case EMFILE:
    case ENFILE:
        return head + "out of file descriptors; raise LimitNOFILE or use aio=threads";
    default:
        return head + "use aio=threads";
    }
}

} // namespace detail

uring_probe probe_io_uring()
{
    uring_probe p;
    int err = detail::forced_uring_failure();
    if (err == 0) {
        io_uring ring{};
        int ret = io_uring_queue_init(4, &ring, 0);
        if (ret == 0) {
            io_uring_queue_exit(&ring);
            p.usable = true;
            return p;
        }
        err = -ret;
    }
    p.error = err;
    p.reason = detail::explain_uring_failure(err);
    if (detail::forced_uring_failure())
        p.reason += " (forced by BJD_FORCE_URING_FAILURE)";
    return p;
}

aligned_buffer make_registered_buffer(engine& e, std::size_t size)
{
    aligned_buffer b(size);
    b.keep_registration(e.register_range(b.allocation()));
    return b;
}

std::unique_ptr<engine> make_engine(asio::io_context& ctx, backend want, const engine_options& opts,
                                    std::string* fallback_reason)
{
    if (want == backend::io_uring) {
        detail::uring_setup_failure failure;
        if (int forced = detail::forced_uring_failure()) {
            failure.error = forced;
            failure.reason = detail::explain_uring_failure(forced) + " (forced by BJD_FORCE_URING_FAILURE)";
        } else if (auto e = detail::make_uring_engine(ctx, opts, failure)) {
            return e;
        }
        log::get("io")->warn("aio=io_uring is not available, falling back to aio=threads: {}", failure.reason);
        if (fallback_reason)
            *fallback_reason = failure.reason;
    }
    return detail::make_thread_engine(ctx, opts);
}

} // namespace bjd::io
