// SPDX-License-Identifier: MIT
// NBD wire helpers: request decoding and reply header encoding.
#include "bjd/export/nbd_protocol.hpp"

#include <cerrno>

namespace bjd::exports::nbd {

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

void encode_simple_reply(std::vector<std::byte>& out, std::uint32_t error, std::uint64_t cookie)
{
    writer(out).u32(simple_reply_magic).u32(error).u64(cookie);
}

void encode_chunk_header(std::vector<std::byte>& out, std::uint16_t flags, std::uint16_t type,
                         std::uint64_t cookie, std::uint32_t length)
{
    writer(out).u32(structured_reply_magic).u16(flags).u16(type).u64(cookie).u32(length);
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

} // namespace bjd::exports::nbd
