// SPDX-License-Identifier: MIT
// Throughput of the I/O engines: N coroutines each doing random reads (or writes) of one
// block size on a preallocated file, for a fixed time, per backend.
//
// Not part of the build (bench/ has no CMake entry yet). Build it from the sources, optimised:
//   g++ -std=c++20 -O2 -DNDEBUG -DBOOST_ASIO_NO_DEPRECATED -DBOOST_ASIO_DISABLE_STD_ALIGNED_ALLOC \
//       -I lib/io/include -I lib/io/src -I lib/common/include bench/io/engine_bench.cpp \
//       lib/io/src/*.cpp lib/common/src/*.cpp -luring -lspdlog -lfmt -lsystemd \
//       -o /tmp/engine_bench
// Usage: engine_bench [dir=/var/tmp] [bs=4096] [depth=32] [seconds=3] [direct=1] [write=0]
#include "bjd/io/buffer.hpp"
#include "bjd/io/engine.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace asio = boost::asio;
using namespace bjd::io;
using clock_type = std::chrono::steady_clock;

namespace {

struct run_state {
    clock_type::time_point deadline;
    std::uint64_t ops = 0;
    std::uint64_t errors = 0;
};

asio::awaitable<void> worker(engine* e, int fd, std::size_t bs, std::uint64_t blocks, bool write,
                             unsigned seed, run_state* st)
{
    aligned_buffer buf(bs);
    std::minstd_rand rng(seed);
    while (clock_type::now() < st->deadline) {
        std::uint64_t off = (rng() % blocks) * bs;
        bool ok = write ? bool(co_await e->write(fd, buf.span(), off))
                        : bool(co_await e->read(fd, buf.span(), off));
        ok ? ++st->ops : ++st->errors;
    }
}

void bench(backend b, int fd, std::size_t bs, std::uint64_t blocks, unsigned depth, double seconds, bool write)
{
    asio::io_context ctx;
    engine_options opts;
    opts.queue_depth = depth;
    opts.pool_threads = std::min(depth, 64u);
    std::string why;
    auto e = make_engine(ctx, b, opts, &why);
    run_state st;
    st.deadline = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(seconds));
    auto t0 = clock_type::now();
    for (unsigned i = 0; i < depth; ++i)
        asio::co_spawn(ctx, worker(e.get(), fd, bs, blocks, write, i + 1, &st), asio::detached);
    ctx.run();
    double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
    auto s = e->stats();
    std::printf("%-9s %-5s bs=%-7zu depth=%-4u %10.0f IOPS %9.1f MiB/s  errors=%llu  submits/op=%.3f\n",
                to_string(e->kind()), write ? "write" : "read", bs, depth, st.ops / secs,
                st.ops * double(bs) / secs / (1 << 20), (unsigned long long)st.errors,
                s.sqes ? double(s.submit_calls) / double(s.sqes) : 0.0);
}

} // namespace

int main(int argc, char** argv)
{
    std::string dir = argc > 1 ? argv[1] : "/var/tmp";
    std::size_t bs = argc > 2 ? std::strtoul(argv[2], nullptr, 0) : 4096;
    unsigned depth = argc > 3 ? std::strtoul(argv[3], nullptr, 0) : 32;
    double seconds = argc > 4 ? std::atof(argv[4]) : 3.0;
    bool direct = argc > 5 ? std::atoi(argv[5]) != 0 : true;
    bool write = argc > 6 ? std::atoi(argv[6]) != 0 : false;

    std::string path = dir + "/bjd-engine-bench-XXXXXX";
    int tmp = ::mkstemp(path.data());
    if (tmp < 0) {
        std::perror("mkstemp");
        return 1;
    }
    constexpr std::uint64_t file_size = 256ull << 20;
    // Real data, not a hole, so reads hit the device.
    {
        aligned_buffer chunk(1 << 20);
        std::fill_n(chunk.data(), chunk.size(), std::byte{0x42});
        for (std::uint64_t off = 0; off < file_size; off += chunk.size())
            if (::pwrite(tmp, chunk.data(), chunk.size(), off) != ssize_t(chunk.size()))
                return std::perror("pwrite"), 1;
        ::fsync(tmp);
    }
    int fd = ::open(path.c_str(), O_RDWR | (direct ? O_DIRECT : 0));
    ::unlink(path.c_str());
    ::close(tmp);
    if (fd < 0)
        return std::perror("open"), 1;
    for (backend b : {backend::io_uring, backend::threads})
        bench(b, fd, bs, file_size / bs, depth, seconds, write);
    ::close(fd);
    return 0;
}
