// SPDX-License-Identifier: MIT
// Data-path cost of block accounting: ns per start()+done() pair, one thread and several,
// with counters only, and with two timed intervals and a histogram. Built by hand:
//   g++ -std=c++20 -O2 -Ilib/stats/include -Ilib/stats/src -Ilib/common/include \
//       bench/stats/acct_bench.cpp lib/stats/src/*.cpp lib/common/src/log.cpp \
//       -lspdlog -lfmt -pthread -o /tmp/acct_bench && /tmp/acct_bench
#include "bjd/stats/block_acct.hpp"

#include <ctime>
#include <cstdio>
#include <thread>
#include <vector>

using namespace bjd::stats;

namespace {

double thread_cpu_ns()
{
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) * 1e9 + double(ts.tv_nsec);
}

/// CPU time per request, averaged over threads (CPU time, not wall time: the machine is shared).
double run(block_acct& a, int threads, long per_thread)
{
    std::vector<double> cpu(threads);
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
        ts.emplace_back([&a, &cpu, t, per_thread] {
            double c0 = thread_cpu_ns();
            for (long i = 0; i < per_thread; ++i)
                a.done(a.start(op::read, 4096));
            cpu[t] = thread_cpu_ns() - c0;
        });
    for (auto& t : ts)
        t.join();
    double sum = 0;
    for (double c : cpu)
        sum += c;
    return sum / threads / double(per_thread);
}

} // namespace

int main()
{
    constexpr long n = 5'000'000;
    std::printf("%-28s %8s %12s\n", "configuration", "threads", "CPU ns/req");
    for (int threads : {1, 2}) {
        block_acct plain(monotonic_clock(), nullptr);
        std::printf("%-28s %8d %12.1f\n", "counters", threads, run(plain, threads, n));
        block_acct full(monotonic_clock(), nullptr);
        std::vector<std::uint32_t> iv{1, 60};
        full.set_intervals(iv);
        std::vector<std::uint64_t> b{10000, 100000, 1000000};
        full.set_histogram(op::read, b);
        std::printf("%-28s %8d %12.1f\n", "counters+2 intervals+hist", threads, run(full, threads, n));
    }
    set_accounting_enabled(false);
    block_acct off(monotonic_clock(), nullptr);
    std::printf("%-28s %8d %12.1f\n", "disabled (BJD_STATS_DISABLE)", 1, run(off, 1, n));
}
