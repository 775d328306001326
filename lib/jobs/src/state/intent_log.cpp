// SPDX-License-Identifier: MIT
// The write-intent log of a mirror kept in --state-dir (state/intent_log.hpp).
#include "state/intent_log.hpp"

#include "bjd/log.hpp"

#include <boost/asio/co_spawn.hpp>

#include <cstring>
#include <span>

#include <fcntl.h>
#include <unistd.h>

namespace bjd::jobs::detail {

intent_log::intent_log(asio::any_io_executor ex, io::engine& engine, std::uint64_t size, std::uint64_t region,
                       std::string generation)
    : ex_(ex), engine_(engine), region_(region), changed_(ex)
{
    rec_.size = size;
    rec_.region = region;
    rec_.generation = std::move(generation);
    const std::uint64_t n = rec_.regions();
    want_.assign((n + 7) / 8, 0);
    fast_ = want_;
    in_flight_.assign(n, 0);
    last_epoch_.assign(n, 0);
}

intent_log::~intent_log()
{
    if (fd_ >= 0)
        ::close(fd_);
}

asio::awaitable<qapi::result<void>> intent_log::create(const std::string& dir, const std::string& name,
                                                      std::function<bool()> still_wanted)
{
    intent_record r = rec_;
    r.seq = 1;
    r.bitmap = want_;
    const std::string bytes = encode_intent_log(r);
    auto w = co_await co_write_file_atomic(engine_, dir, name, bytes, std::move(still_wanted));
    if (!w)
        co_return w;
    const std::string path = dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
    fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0)
        co_return qapi::generic("'" + path + "': " + std::strerror(errno));
    rec_.seq = 1;
    co_return qapi::result<void>{};
}

void intent_log::put(std::vector<std::uint8_t>& b, std::uint64_t r, bool v) noexcept
{
    const auto bit = static_cast<std::uint8_t>(1u << (r % 8));
    b[r / 8] = static_cast<std::uint8_t>(v ? b[r / 8] | bit : b[r / 8] & ~bit);
}

bool intent_log::covered(std::uint64_t offset, std::uint64_t length) const noexcept
{
    for (std::uint64_t r = offset / region_; r <= (offset + length - 1) / region_ && r < in_flight_.size(); ++r)
        if (!test(fast_, r))
            return false;
    return true;
}

bool intent_log::enter(std::uint64_t offset, std::uint64_t length)
{
    ++in_flight_total_;
    if (length == 0)
        return true;
    bool all = true;
    for (std::uint64_t r = offset / region_; r <= (offset + length - 1) / region_ && r < in_flight_.size(); ++r) {
        ++in_flight_[r];
        last_epoch_[r] = epoch_;
        if (!test(fast_, r)) {
            all = false;
            if (!test(want_, r)) {
                put(want_, r, true);
                pending_ = true;
            }
        }
    }
    if (all || stopped_ || failed())
        return true;
    kick();
    return false;
}

asio::awaitable<void> intent_log::wait(std::uint64_t offset, std::uint64_t length)
{
    ++waited_;
    auto self = shared_from_this();   // the job may let go of the log while this waits
    while (!stopped_ && !failed() && !covered(offset, length))
        co_await changed_.wait();
}

void intent_log::leave(std::uint64_t offset, std::uint64_t length)
{
    --in_flight_total_;
    if (length == 0)
        return;
    for (std::uint64_t r = offset / region_; r <= (offset + length - 1) / region_ && r < in_flight_.size(); ++r)
        --in_flight_[r];
}

intent_log::ticket intent_log::begin_checkpoint()
{
    ticket t;
    t.epoch = ++epoch_;
    for (std::uint64_t r = 0; r < in_flight_.size(); ++r)
        if (test(want_, r) && in_flight_[r] == 0)
            t.candidates.push_back(r);
    return t;
}

void intent_log::end_checkpoint(const ticket& t)
{
    bool cleared = false;
    for (std::uint64_t r : t.candidates) {
        if (last_epoch_[r] >= t.epoch || !test(want_, r))
            continue;   // written since the snapshot: the checkpoint does not cover it
        put(want_, r, false);
        put(fast_, r, false);
        cleared = true;
    }
    if (cleared) {
        pending_ = true;
        kick();
    }
}

std::uint64_t intent_log::marked() const noexcept
{
    std::uint64_t n = 0;
    for (std::uint64_t r = 0; r < in_flight_.size(); ++r)
        n += test(want_, r);
    return n;
}

void intent_log::stop()
{
    stopped_ = true;
    changed_.notify_all();
}

void intent_log::kick()
{
    if (writing_ || stopped_ || failed() || fd_ < 0)
        return;
    writing_ = true;
    // Ownership: the writer holds the log until its last record is durable.
    asio::co_spawn(ex_, writer(shared_from_this()), log::on_failure("jobs", "write-intent log", spdlog::level::critical));
}

asio::awaitable<void> intent_log::writer(std::shared_ptr<intent_log> self)
{
    auto& l = *self;
    while (l.pending_ && !l.stopped_ && !l.failed()) {
        l.pending_ = false;
        intent_record r = l.rec_;
        r.seq = l.rec_.seq + 1;
        r.bitmap = l.want_;
        const std::string slot = encode_intent_slot(r);
        const std::uint64_t at = (r.seq % 2) * slot.size();
        auto w = co_await l.engine_.write(l.fd_, std::as_bytes(std::span(slot.data(), slot.size())), at);
        if (w)
            w = co_await l.engine_.fsync(l.fd_, true);
        if (!w) {
            l.failure_ = std::string("cannot write the write-intent log: ") + std::strerror(w.error().value());
            break;
        }
        l.rec_.seq = r.seq;
        ++l.records_;
        // Durable now: what it holds and is still wanted (a clearing since may have dropped some).
        for (std::size_t i = 0; i < l.fast_.size(); ++i)
            l.fast_[i] = static_cast<std::uint8_t>(r.bitmap[i] & l.want_[i]);
        l.changed_.notify_all();
    }
    l.writing_ = false;
    l.changed_.notify_all();
}

} // namespace bjd::jobs::detail
