// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// NBD wire format (doc/proto.md of NetworkBlockDevice/nbd): magic numbers, option and
/// command codes, flags, and the big-endian encode/decode helpers. One definition for both
/// ends: the NBD server (lib/export) and the nbd block driver (lib/block) use it.
///
/// Pure functions and constants; no I/O. Everything here is written from the protocol
/// document, and the unit tests drive the server with these same helpers.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::nbd {

// ---- handshake -------------------------------------------------------------------------------
inline constexpr std::uint64_t init_magic = 0x4e42444d41474943ull;     ///< "NBDMAGIC"
inline constexpr std::uint64_t opts_magic = 0x49484156454f5054ull;     ///< "IHAVEOPT"
inline constexpr std::uint64_t rep_magic = 0x0003e889045565a9ull;      ///< option replies

inline constexpr std::uint16_t flag_fixed_newstyle = 1u << 0;          ///< server handshake flags
inline constexpr std::uint16_t flag_no_zeroes = 1u << 1;
inline constexpr std::uint32_t flag_c_fixed_newstyle = 1u << 0;        ///< client flags
inline constexpr std::uint32_t flag_c_no_zeroes = 1u << 1;

enum opt : std::uint32_t {
    opt_export_name = 1,
    opt_abort = 2,
    opt_list = 3,
    opt_starttls = 5,
    opt_info = 6,
    opt_go = 7,
    opt_structured_reply = 8,
    opt_list_meta_context = 9,
    opt_set_meta_context = 10,
};

enum rep : std::uint32_t {
    rep_ack = 1,
    rep_server = 2,
    rep_info = 3,
    rep_meta_context = 4,
    rep_err_unsup = 0x80000001u,
    rep_err_policy = 0x80000002u,
    rep_err_invalid = 0x80000003u,
    rep_err_platform = 0x80000004u,
    rep_err_tls_reqd = 0x80000005u,
    rep_err_unknown = 0x80000006u,
    rep_err_shutdown = 0x80000007u,
    rep_err_block_size_reqd = 0x80000008u,
    rep_err_too_big = 0x80000009u,
};

enum info : std::uint16_t { info_export = 0, info_name = 1, info_description = 2, info_block_size = 3 };

// ---- transmission ----------------------------------------------------------------------------
enum tflag : std::uint16_t {
    tflag_has_flags = 1u << 0,
    tflag_read_only = 1u << 1,
    tflag_send_flush = 1u << 2,
    tflag_send_fua = 1u << 3,
    tflag_rotational = 1u << 4,
    tflag_send_trim = 1u << 5,
    tflag_send_write_zeroes = 1u << 6,
    tflag_send_df = 1u << 7,
    tflag_can_multi_conn = 1u << 8,
    tflag_send_cache = 1u << 10,
    tflag_send_fast_zero = 1u << 11,
};

inline constexpr std::uint32_t request_magic = 0x25609513u;
inline constexpr std::uint32_t simple_reply_magic = 0x67446698u;
inline constexpr std::uint32_t structured_reply_magic = 0x668e33efu;
inline constexpr std::size_t request_size = 28;

enum cmd : std::uint16_t {
    cmd_read = 0,
    cmd_write = 1,
    cmd_disc = 2,
    cmd_flush = 3,
    cmd_trim = 4,
    cmd_cache = 5,
    cmd_write_zeroes = 6,
    cmd_block_status = 7,
};

enum cmd_flag : std::uint16_t {
    cmd_flag_fua = 1u << 0,
    cmd_flag_no_hole = 1u << 1,
    cmd_flag_df = 1u << 2,
    cmd_flag_req_one = 1u << 3,
    cmd_flag_fast_zero = 1u << 4,
};

enum chunk : std::uint16_t {
    chunk_none = 0,
    chunk_offset_data = 1,
    chunk_offset_hole = 2,
    chunk_block_status = 5,
    chunk_error = 0x8001,
    chunk_error_offset = 0x8002,
};
inline constexpr std::uint16_t chunk_flag_done = 1;

/// base:allocation extent flags.
inline constexpr std::uint32_t state_hole = 1u << 0;
inline constexpr std::uint32_t state_zero = 1u << 1;

/// The meta contexts we serve, and the ids we give them: base:allocation, and each dirty
/// bitmap an export serves (qemu:dirty-bitmap:NAME, ids from 2 in the export's order).
inline constexpr std::string_view base_allocation = "base:allocation";
inline constexpr std::uint32_t base_allocation_id = 1;
inline constexpr std::string_view dirty_bitmap_prefix = "qemu:dirty-bitmap:";
inline constexpr std::uint32_t first_bitmap_id = 2;
/// qemu:dirty-bitmap extent flag.
inline constexpr std::uint32_t state_dirty = 1u << 0;

/// NBD error values (the protocol's own numbering, which happens to match Linux errno).
enum wire_error : std::uint32_t {
    err_perm = 1, err_io = 5, err_nomem = 12, err_inval = 22, err_nospc = 28,
    err_overflow = 75, err_notsup = 95, err_shutdown = 108,
};

/// Maps a host errno to the closest NBD error (unknown ones become EIO, as the spec asks).
std::uint32_t to_wire_error(int host_errno) noexcept;
/// Maps an NBD error from a server to a host errno (unknown ones become EIO; never 0).
int from_wire_error(std::uint32_t wire) noexcept;

/// Largest READ/WRITE payload we accept (the spec's recommended 32 MiB bound).
inline constexpr std::uint32_t max_payload = 32u << 20;
/// Largest option payload read during the handshake.
inline constexpr std::uint32_t max_option_length = 64u << 10;
/// Export names (and descriptions) are limited to 4096 bytes by the spec.
inline constexpr std::size_t max_string = 4096;

// ---- byte order ------------------------------------------------------------------------------
inline std::uint16_t load_be16(const std::byte* p) noexcept
{
    return std::uint16_t((std::uint16_t(p[0]) << 8) | std::uint16_t(p[1]));
}
inline std::uint32_t load_be32(const std::byte* p) noexcept
{
    return (std::uint32_t(load_be16(p)) << 16) | load_be16(p + 2);
}
inline std::uint64_t load_be64(const std::byte* p) noexcept
{
    return (std::uint64_t(load_be32(p)) << 32) | load_be32(p + 4);
}

/// Appends big-endian values to a byte vector.
class writer {
public:
    explicit writer(std::vector<std::byte>& out) : out_(out) {}
    /// Room for `n` more bytes, growing as push_back would (at least doubling). An encoder
    /// that knows its size asks once, so that a header is one allocation; a message of many
    /// fields or chunks still grows geometrically.
    writer& room(std::size_t n)
    {
        if (out_.capacity() - out_.size() < n)
            out_.reserve(std::max(out_.capacity() * 2, out_.size() + n));
        return *this;
    }
    writer& u16(std::uint16_t v) { return put(v, 2); }
    writer& u32(std::uint32_t v) { return put(v, 4); }
    writer& u64(std::uint64_t v) { return put(v, 8); }
    writer& bytes(std::string_view s)
    {
        auto* p = reinterpret_cast<const std::byte*>(s.data());
        out_.insert(out_.end(), p, p + s.size());
        return *this;
    }
    writer& zeroes(std::size_t n)
    {
        out_.insert(out_.end(), n, std::byte{0});
        return *this;
    }

private:
    writer& put(std::uint64_t v, int n)
    {
        room(std::size_t(n));   // byte by byte, a 20-byte header reallocated five times
        for (int i = n - 1; i >= 0; --i)
            out_.push_back(std::byte((v >> (8 * i)) & 0xff));
        return *this;
    }
    std::vector<std::byte>& out_;
};

/// Reads big-endian values from an option payload, failing softly past the end.
class reader {
public:
    explicit reader(std::span<const std::byte> in) : in_(in) {}
    bool u16(std::uint16_t& v) { return get(v, 2); }
    bool u32(std::uint32_t& v) { return get(v, 4); }
    bool u64(std::uint64_t& v) { return get(v, 8); }
    bool str(std::size_t n, std::string& s)
    {
        if (in_.size() - pos_ < n)
            return false;
        s.assign(reinterpret_cast<const char*>(in_.data() + pos_), n);
        pos_ += n;
        return true;
    }
    std::size_t remaining() const noexcept { return in_.size() - pos_; }

private:
    template <class T>
    bool get(T& v, std::size_t n)
    {
        if (in_.size() - pos_ < n)
            return false;
        std::uint64_t x = 0;
        for (std::size_t i = 0; i < n; ++i)
            x = (x << 8) | std::uint64_t(in_[pos_ + i]);
        v = T(x);
        pos_ += n;
        return true;
    }
    std::span<const std::byte> in_;
    std::size_t pos_ = 0;
};

/// A decoded transmission request header.
struct request {
    std::uint16_t flags = 0;
    std::uint16_t type = 0;
    std::uint64_t cookie = 0;
    std::uint64_t offset = 0;
    std::uint32_t length = 0;
};

/// Decodes the 28-byte header; false when the magic is wrong (a protocol error: the server
/// drops the connection because it cannot resynchronise).
bool decode_request(std::span<const std::byte, request_size> in, request& out) noexcept;
void encode_request(std::vector<std::byte>& out, const request& r);

/// Option reply header (+ payload length); the caller appends `length` payload bytes.
void encode_option_reply(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t type,
                         std::uint32_t length);
void encode_simple_reply(std::vector<std::byte>& out, std::uint32_t error, std::uint64_t cookie);
void encode_chunk_header(std::vector<std::byte>& out, std::uint16_t flags, std::uint16_t type,
                         std::uint64_t cookie, std::uint32_t length);

// ---- client side ----------------------------------------------------------------------------
/// Client option header: "IHAVEOPT", option, payload length; the caller appends the payload.
void encode_option(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t length);

/// A decoded option reply header (20 bytes; `length` payload bytes follow).
inline constexpr std::size_t option_reply_size = 20;
struct option_reply {
    std::uint32_t option = 0;
    std::uint32_t type = 0;
    std::uint32_t length = 0;
};
/// False when the magic is wrong.
bool decode_option_reply(std::span<const std::byte, option_reply_size> in, option_reply& out) noexcept;
/// Whether an option reply type is an error (NBD_REP_ERR_*: the high bit set).
inline constexpr bool is_rep_error(std::uint32_t type) noexcept { return (type & 0x80000000u) != 0; }

/// A decoded transmission reply header. Simple replies are 16 bytes, structured reply
/// chunks 20: decode the first 16 with `decode_reply_start`, and when it says `structured`,
/// the 4-byte chunk length that follows with `load_be32`.
inline constexpr std::size_t simple_reply_size = 16;
inline constexpr std::size_t chunk_header_size = 20;
struct reply_header {
    bool structured = false;
    std::uint32_t error = 0;      ///< simple: the NBD error
    std::uint16_t flags = 0;      ///< structured: chunk flags (chunk_flag_done)
    std::uint16_t type = 0;       ///< structured: chunk type
    std::uint64_t cookie = 0;
    std::uint32_t length = 0;     ///< structured: payload length (the 4 bytes after the first 16)
};
/// False when the magic is neither reply magic.
bool decode_reply_start(std::span<const std::byte, simple_reply_size> in, reply_header& out) noexcept;

/// Human-readable names for logs ("READ", "NBD_OPT_GO").
const char* cmd_name(std::uint16_t type) noexcept;
const char* opt_name(std::uint32_t option) noexcept;
/// "NBD_REP_ERR_UNKNOWN" and the like, for errors from servers.
const char* rep_name(std::uint32_t type) noexcept;

} // namespace bjd::nbd
