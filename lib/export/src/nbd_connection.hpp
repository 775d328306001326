// SPDX-License-Identifier: MIT
#pragma once
// One NBD client connection: fixed-newstyle handshake, then the transmission phase.
//
// The read loop decodes one request at a time, reads a WRITE's payload, and spawns a request
// coroutine for it, so many requests run at once. Replies are queued and sent by a single
// writer coroutine, which gathers everything queued into one write. The number of requests in
// flight and the payload bytes they hold are bounded (manager::limits()); the read loop waits
// for room before it reads further. A connection ends on DISC, EOF, a protocol error or
// close(); it always waits for its in-flight requests (so acknowledged and received writes
// reach the node) before it detaches from its export.
//
// Threads (docs/nbd-threads.md): the handshake, attach and detach run on the main loop. The
// transmission phase runs on the connection's loop (nbd_loops), which may be a worker; each
// request's execute() hops to the main loop for the export and the node, and back. While the
// transmission phase runs, the main loop touches only `closing_` and the fd (hung_up()) and
// posts close().
#include "bjd/crypto/tls_session.hpp"
#include "bjd/event_flag.hpp"
#include "bjd/export/manager.hpp"
#include "bjd/nbd/protocol.hpp"
#include "bjd/io/buffer.hpp"
#include "nbd_loops.hpp"

#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/container/small_vector.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <vector>

namespace bjd::exports::detail {

/// Counts live connections so that shutdown can wait for them. Main loop only.
struct connection_tracker {
    explicit connection_tracker(asio::io_context& loop)
        : changed(loop, asio::steady_timer::time_point::max()), loops(loop, 0)
    {
    }
    std::size_t live = 0;
    std::vector<std::weak_ptr<class connection>> all;   // for closing everything at shutdown
    asio::steady_timer changed;   // expiry is never reset: cancel() wakes every waiter
    nbd_loops loops;
};

class connection final : public client, public std::enable_shared_from_this<connection> {
public:
    using socket_type = asio::generic::stream_protocol::socket;

    connection(manager& m, socket_type sock, std::shared_ptr<connection_tracker> tracker);
    ~connection() override;

    /// Spawns the connection's coroutine on the main loop (which keeps it alive).
    static void start(std::shared_ptr<connection> c);

    /// Main loop: ends the connection; posted to its loop while the transmission phase runs.
    void close() override;
    bool hung_up() const override;

private:
    struct reply {
        std::vector<std::byte> head;
        io::aligned_buffer data;      // optional payload after head
        std::size_t data_len = 0;
        std::size_t charge = 0;       // bytes counted against the buffer limit
        /// A reply of several chunks (a sparse READ): each piece is head bytes up to
        /// `head_end`, then `data_len` bytes of `data` from `data_off`. Empty: head, then data.
        struct piece {
            std::size_t head_end, data_off, data_len;
        };
        boost::container::small_vector<piece, 1> pieces;   // one chunk, the usual READ: no allocation
    };

    static asio::awaitable<void> run(std::shared_ptr<connection> self);
    asio::awaitable<void> run_phases();
    /// close() on the thread that owns the connection's state at the moment.
    void close_here();

    // handshake (nbd_handshake.cpp): true when transmission should start with exp_ set
    asio::awaitable<bool> handshake();
    asio::awaitable<bool> send(std::vector<std::byte> bytes);
    /// The connection's byte stream: the socket, or the TLS session after NBD_OPT_STARTTLS.
    asio::awaitable<boost::system::error_code> read_exact(asio::mutable_buffer buf);
    /// NBD_OPT_STARTTLS: ACK, TLS handshake, tls-authz. False drops the connection.
    asio::awaitable<bool> start_tls(std::uint32_t option, std::size_t length);
    /// An option other than STARTTLS while TLS is required but not yet started.
    asio::awaitable<int> refuse_before_tls(std::uint32_t option);
    asio::awaitable<bool> send_option_reply(std::uint32_t option, std::uint32_t type,
                                            std::vector<std::byte> payload = {});
    asio::awaitable<bool> send_error(std::uint32_t option, std::uint32_t type, std::string message);
    /// 1 = continue option haggling, 2 = enter transmission, 0 = drop the connection
    asio::awaitable<int> handle_option(std::uint32_t option, std::vector<std::byte> data);
    asio::awaitable<int> handle_info_go(std::uint32_t option, std::span<const std::byte> data);
    asio::awaitable<int> handle_meta_context(std::uint32_t option, std::span<const std::byte> data);
    std::uint16_t transmission_flags(const block_export& e) const;

    // transmission (nbd_connection.cpp)
    asio::awaitable<void> transmission();
    static asio::awaitable<void> process(std::shared_ptr<connection> self, nbd::request req,
                                         io::aligned_buffer payload, std::size_t charge);
    /// Main loop. `buf`: READ's buffer, taken from the connection's loop's pool beforehand.
    asio::awaitable<reply> execute(const nbd::request& req, io::aligned_buffer& payload, io::aligned_buffer& buf);
    asio::awaitable<reply> block_status(const nbd::request& req, block::node& n);
    void bitmap_status(const nbd::request& req, const block::dirty_bitmap& b, std::uint32_t id, bool last,
                       reply& r) const;
    asio::awaitable<reply> sparse_read(const nbd::request& req, block::node& n, io::aligned_buffer& buf);
    reply error_reply(const nbd::request& req, std::uint32_t error, std::string_view message) const;
    reply ok_reply(const nbd::request& req) const;
    /// Until at least `need` (≤ input_bytes) bytes are buffered in in_.
    asio::awaitable<boost::system::error_code> fill(std::size_t need);
    /// Bytes read from the stream and not yet taken. fill() is a coroutine, a frame allocated
    /// on every call: its callers check this first, as a pipelining client's requests usually
    /// arrive several to one read.
    std::size_t buffered_input() const noexcept { return in_end_ - in_beg_; }
    /// A WRITE's payload: from in_, and what in_ does not hold straight from the stream.
    asio::awaitable<boost::system::error_code> read_payload(std::byte* dst, std::size_t n);
    asio::awaitable<bool> discard_payload(std::uint32_t length);
    void enqueue(reply r);
    static asio::awaitable<void> write_loop(std::shared_ptr<connection> self);
    /// The flag's own awaitable, with no coroutine frame of its own around it.
    asio::awaitable<void> wait_changed() { return changed_.wait(); }
    void notify() { changed_.notify_all(); }

    manager& mgr_;
    std::shared_ptr<connection_tracker> tracker_;
    nbd_loop& loop_;
    socket_type socket_;                  ///< belongs to loop_
    const int fd_;                        ///< socket_'s, for hung_up() from the main loop
    event_flag changed_;                  ///< on loop_: a reply queued, a slot freed, closing
    asio::steady_timer handshake_timer_;
    std::shared_ptr<block_export> exp_;
    std::string peer_;
    std::unique_ptr<crypto::tls_session> tls_;   ///< set once NBD_OPT_STARTTLS succeeded

    bool no_zeroes_ = false;
    bool structured_ = false;
    bool meta_allocation_ = false;        // base:allocation selected
    std::vector<std::size_t> meta_bitmaps_;   // selected qemu:dirty-bitmap contexts: indexes
                                              // into the export's bitmaps, ascending
    std::string meta_export_;             // export name the meta context was set for
    bool handshake_done_ = false;

    bool transmitting_ = false;           ///< main loop: the transmission phase runs on loop_
    bool on_loop_ = false;                ///< loop_: transmission() is running
    bool shut_ = false;                   ///< the socket was shut down by close_here()
    std::atomic<bool> closing_ = false;   // close() called or socket broken
    bool reading_done_ = false;
    bool writer_done_ = false;
    unsigned in_flight_ = 0;
    std::size_t buffered_ = 0;
    std::deque<reply> queue_;
    std::vector<std::byte> in_;           ///< transmission input, [in_beg_, in_end_) unparsed
    std::size_t in_beg_ = 0;
    std::size_t in_end_ = 0;
};

/// Bounds for the handshake: a client gets this long to reach the transmission phase.
inline constexpr auto handshake_timeout = std::chrono::seconds(10);

} // namespace bjd::exports::detail
