// SPDX-License-Identifier: MIT
// query-cpus, query-cpus-fast and query-iothreads: the daemon's event-loop threads presented
// as CPUs (schemas/machine.json explains the mapping). Today there is one: the main loop, which
// runs every command, so it is always current and never halted.
#include "bjd/qapi/commands.hpp"
#include "bjd/io/poll_loop.hpp"
#include "bjd/qmp/context.hpp"

#include <sys/syscall.h>
#include <unistd.h>

namespace bjd::qapi {

namespace {

std::int64_t current_tid() { return static_cast<std::int64_t>(::syscall(SYS_gettid)); }

/// One event-loop thread as the queries see it.
struct loop_thread {
    std::int64_t index;
    std::string path;
    std::string id;
    std::int64_t tid;
    bool current;
    bool idle;
};

std::vector<loop_thread> loop_threads()
{
    // The command runs on the main loop, so the main loop is this thread and busy.
    const std::string id(io::main_loop_id);
    return {loop_thread{0, "/objects/" + id, id, current_tid(), true, false}};
}

cpu_info_arch host_arch()
{
#if defined(__x86_64__) || defined(__i386__)
    return cpu_info_arch::x86;
#elif defined(__riscv)
    return cpu_info_arch::riscv;
#elif defined(__powerpc__) || defined(__powerpc64__)
    return cpu_info_arch::ppc;
#elif defined(__mips__)
    return cpu_info_arch::mips;
#elif defined(__s390x__) || defined(__s390__)
    return cpu_info_arch::s390;
#elif defined(__sparc__)
    return cpu_info_arch::sparc;
#else
    return cpu_info_arch::other;
#endif
}

sys_emu_target host_target()
{
#if defined(__x86_64__)
    return sys_emu_target::x86_64;
#elif defined(__i386__)
    return sys_emu_target::i386;
#elif defined(__aarch64__)
    return sys_emu_target::aarch64;
#elif defined(__arm__)
    return sys_emu_target::arm;
#elif defined(__riscv) && __riscv_xlen == 64
    return sys_emu_target::riscv64;
#elif defined(__riscv)
    return sys_emu_target::riscv32;
#elif defined(__powerpc64__)
    return sys_emu_target::ppc64;
#elif defined(__powerpc__)
    return sys_emu_target::ppc;
#elif defined(__s390x__)
    return sys_emu_target::s390x;
#elif defined(__mips__) && defined(__mips64)
    return sys_emu_target::mips64;
#elif defined(__mips__)
    return sys_emu_target::mips;
#elif defined(__sparc__) && defined(__arch64__)
    return sys_emu_target::sparc64;
#elif defined(__sparc__)
    return sys_emu_target::sparc;
#elif defined(__loongarch64)
    return sys_emu_target::loongarch64;
#else
#error "unknown host architecture: add it to host_target()"
#endif
}

} // namespace

boost::asio::awaitable<result<std::vector<cpu_info>>> qmp_query_cpus(qmp::context& ctx)
{
    std::vector<cpu_info> out;
    for (const loop_thread& t : loop_threads()) {
        cpu_info c;
        c.CPU = t.index;
        c.current = t.current;
        c.halted = t.idle;
        c.qom_path = t.path;
        c.thread_id = t.tid;
        c.arch = host_arch();
        // A host thread has no guest program counter: the arch members are 0.
        switch (c.arch) {
        case cpu_info_arch::x86: c.u.x86 = cpu_info_x86{0}; break;
        case cpu_info_arch::riscv: c.u.riscv = cpu_info_riscv{0}; break;
        case cpu_info_arch::ppc: c.u.ppc = cpu_info_ppc{0}; break;
        case cpu_info_arch::mips: c.u.mips = cpu_info_mips{0}; break;
        case cpu_info_arch::tricore: c.u.tricore = cpu_info_tricore{0}; break;
        case cpu_info_arch::sparc: c.u.sparc = cpu_info_sparc{0, 0}; break;
        case cpu_info_arch::s390: c.u.s390 = cpu_info_s390{cpu_s390_state::operating}; break;
        case cpu_info_arch::other: break;
        }
        out.push_back(std::move(c));
    }
    co_return out;
}

boost::asio::awaitable<result<std::vector<cpu_info_fast>>> qmp_query_cpus_fast(qmp::context& ctx)
{
    std::vector<cpu_info_fast> out;
    for (const loop_thread& t : loop_threads()) {
        cpu_info_fast c;
        c.cpu_index = t.index;
        c.qom_path = t.path;
        c.thread_id = t.tid;
        c.target = host_target();
        if (c.target == sys_emu_target::s390x)
            c.u.s390x = cpu_info_s390_fast{cpu_s390_state::operating};
        out.push_back(std::move(c));
    }
    co_return out;
}

boost::asio::awaitable<result<std::vector<io_thread_info>>> qmp_query_iothreads(qmp::context& ctx)
{
    std::vector<io_thread_info> out;
    io::poll_params polling;
    if (ctx.main_loop)
        polling = ctx.main_loop->params();
    for (const loop_thread& t : loop_threads())
        out.push_back(io_thread_info{t.id, t.tid, polling.max_ns, polling.grow, polling.shrink, 0});
    co_return out;
}

} // namespace bjd::qapi
