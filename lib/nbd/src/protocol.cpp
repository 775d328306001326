// SPDX-License-Identifier: MIT
// NBD wire helpers: request and reply headers, both directions.
#include "bjd/nbd/protocol.hpp"

#include <cerrno>

namespace bjd::nbd {

std::uint32_t to_wire_error(int e) noexcept
{
    switch (e) {
    case 0: return 0;
    case EPERM: case EROFS: case EACCES: return err_perm;
    case EIO: return err_io;
    case ENOMEM: return err_nomem;
    case EINVAL: case ERANGE: return err_inval;
    case ENOSPC: case EDQUOT: case EFBIG: return err_nospc;
    case EOVERFLOW: return err_overflow;
    case ENOTSUP: return err_notsup;
    case ESHUTDOWN: return err_shutdown;
    default: return err_io;
    }
}

int from_wire_error(std::uint32_t w) noexcept
{
    switch (w) {
    case err_perm: return EPERM;
    case err_io: return EIO;
    case err_nomem: return ENOMEM;
    case err_inval: return EINVAL;
    case err_nospc: return ENOSPC;
    case err_overflow: return EOVERFLOW;
    case err_notsup: return ENOTSUP;
    case err_shutdown: return ESHUTDOWN;
    default: return EIO;
    }
}

bool decode_request(std::span<const std::byte, request_size> in, request& out) noexcept
{
    if (load_be32(in.data()) != request_magic)
        return false;
    out.flags = load_be16(in.data() + 4);
    out.type = load_be16(in.data() + 6);
    out.cookie = load_be64(in.data() + 8);
    out.offset = load_be64(in.data() + 16);
    out.length = load_be32(in.data() + 24);
    return true;
}

void encode_request(std::vector<std::byte>& out, const request& r)
{
    writer(out).u32(request_magic).u16(r.flags).u16(r.type).u64(r.cookie).u64(r.offset).u32(r.length);
}

void encode_option_reply(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t type,
                         std::uint32_t length)
{
    writer(out).u64(rep_magic).u32(option).u32(type).u32(length);
}

// The reply encoders make room for their whole header first: one allocation per reply, not
// one for each time a field outgrows the vector.
void encode_simple_reply(std::vector<std::byte>& out, std::uint32_t error, std::uint64_t cookie)
{
    writer(out).room(simple_reply_size).u32(simple_reply_magic).u32(error).u64(cookie);
}

void encode_chunk_header(std::vector<std::byte>& out, std::uint16_t flags, std::uint16_t type,
                         std::uint64_t cookie, std::uint32_t length)
{
    writer(out).room(chunk_header_size).u32(structured_reply_magic).u16(flags).u16(type).u64(cookie).u32(length);
}

void encode_option(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t length)
{
    writer(out).u64(opts_magic).u32(option).u32(length);
}

bool decode_option_reply(std::span<const std::byte, option_reply_size> in, option_reply& out) noexcept
{
    if (load_be64(in.data()) != rep_magic)
        return false;
    out.option = load_be32(in.data() + 8);
    out.type = load_be32(in.data() + 12);
    out.length = load_be32(in.data() + 16);
    return true;
}

bool decode_reply_start(std::span<const std::byte, simple_reply_size> in, reply_header& out) noexcept
{
    const std::uint32_t magic = load_be32(in.data());
    if (magic == simple_reply_magic) {
        out = reply_header{};
        out.error = load_be32(in.data() + 4);
        out.cookie = load_be64(in.data() + 8);
        return true;
    }
    if (magic == structured_reply_magic) {
        out = reply_header{};
        out.structured = true;
        out.flags = load_be16(in.data() + 4);
        out.type = load_be16(in.data() + 6);
        out.cookie = load_be64(in.data() + 8);
        return true;
    }
    return false;
}

const char* cmd_name(std::uint16_t type) noexcept
{
    switch (type) {
    case cmd_read: return "READ";
    case cmd_write: return "WRITE";
    case cmd_disc: return "DISC";
    case cmd_flush: return "FLUSH";
    case cmd_trim: return "TRIM";
    case cmd_cache: return "CACHE";
    case cmd_write_zeroes: return "WRITE_ZEROES";
    case cmd_block_status: return "BLOCK_STATUS";
    default: return "unknown";
    }
}

const char* opt_name(std::uint32_t option) noexcept
{
    switch (option) {
    case opt_export_name: return "NBD_OPT_EXPORT_NAME";
    case opt_abort: return "NBD_OPT_ABORT";
    case opt_list: return "NBD_OPT_LIST";
    case opt_starttls: return "NBD_OPT_STARTTLS";
    case opt_info: return "NBD_OPT_INFO";
    case opt_go: return "NBD_OPT_GO";
    case opt_structured_reply: return "NBD_OPT_STRUCTURED_REPLY";
    case opt_list_meta_context: return "NBD_OPT_LIST_META_CONTEXT";
    case opt_set_meta_context: return "NBD_OPT_SET_META_CONTEXT";
    default: return "unknown option";
    }
}

const char* rep_name(std::uint32_t type) noexcept
{
    switch (type) {
    case rep_ack: return "NBD_REP_ACK";
    case rep_server: return "NBD_REP_SERVER";
    case rep_info: return "NBD_REP_INFO";
    case rep_meta_context: return "NBD_REP_META_CONTEXT";
    case rep_err_unsup: return "NBD_REP_ERR_UNSUP";
    case rep_err_policy: return "NBD_REP_ERR_POLICY";
    case rep_err_invalid: return "NBD_REP_ERR_INVALID";
    case rep_err_platform: return "NBD_REP_ERR_PLATFORM";
    case rep_err_tls_reqd: return "NBD_REP_ERR_TLS_REQD";
    case rep_err_unknown: return "NBD_REP_ERR_UNKNOWN";
    case rep_err_shutdown: return "NBD_REP_ERR_SHUTDOWN";
    case rep_err_block_size_reqd: return "NBD_REP_ERR_BLOCK_SIZE_REQD";
    case rep_err_too_big: return "NBD_REP_ERR_TOO_BIG";
    default: return "unknown reply";
    }
}

} // namespace bjd::nbd
