// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// A session on a connected stream socket (UNIX or TCP): greeting, ordered request
/// processing, queued output, flush-then-close.
#include "bjd/qmp/json.hpp"
#include "bjd/qmp/session.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace bjd::qmp {

class context;
class dispatcher;

class socket_session final : public session, public std::enable_shared_from_this<socket_session> {
public:
    using socket_type = boost::asio::generic::stream_protocol::socket;

    struct hooks {
        const dispatcher* dispatch = nullptr;
        context* ctx = nullptr;
        json_write_options write_opts;
        std::function<void(std::uint64_t)> on_closed;   ///< the session ended (unregister)
    };

    socket_session(socket_type sock, hooks h, bool oob_offered);

    /// Sends the greeting and starts the reader.
    void start(std::string greeting);

    /// Queues one wire message (dropped once the peer is gone).
    void send(std::string wire);

    /// Stops reading; the reader finishes its current request and then closes.
    void stop_reading();

    /// Waits until queued output is written (or the peer is gone, or `limit` passes).
    boost::asio::awaitable<void> flush(std::chrono::milliseconds limit);

    /// Closes the socket now.
    void close();

private:
    static boost::asio::awaitable<void> read_loop(std::shared_ptr<socket_session> self);
    static boost::asio::awaitable<void> write_loop(std::shared_ptr<socket_session> self);
    void finish();

    socket_type sock_;
    hooks hooks_;
    json_streamer streamer_;
    std::string outbuf_;
    bool writing_ = false;
    bool dead_ = false;       ///< write failed or closed: output is discarded
    bool stopping_ = false;   ///< no further reads
    bool finished_ = false;
};

} // namespace bjd::qmp
