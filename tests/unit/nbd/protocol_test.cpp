// SPDX-License-Identifier: MIT
// The NBD wire format both ends share: headers encoded by one side decode on the other.
#include "bjd/nbd/protocol.hpp"

#include <catch2/catch.hpp>

#include <cerrno>

using namespace bjd::nbd;

namespace {

std::vector<std::byte> bytes(std::initializer_list<unsigned> v)
{
    std::vector<std::byte> out;
    for (unsigned b : v)
        out.push_back(std::byte(b));
    return out;
}

} // namespace

TEST_CASE("request header: encode and decode round trip, big-endian on the wire")
{
    request r{.flags = cmd_flag_fua | cmd_flag_no_hole, .type = cmd_write_zeroes, .cookie = 0x0102030405060708ull,
              .offset = 0x1122334455667788ull, .length = 0x00100000u};
    std::vector<std::byte> out;
    encode_request(out, r);
    REQUIRE(out.size() == request_size);
    CHECK(out == bytes({0x25, 0x60, 0x95, 0x13, 0x00, 0x03, 0x00, 0x06, 1, 2, 3, 4, 5, 6, 7, 8,
                        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x00, 0x10, 0x00, 0x00}));
    request back;
    REQUIRE(decode_request(std::span<const std::byte, request_size>(out.data(), request_size), back));
    CHECK(back.flags == r.flags);
    CHECK(back.type == r.type);
    CHECK(back.cookie == r.cookie);
    CHECK(back.offset == r.offset);
    CHECK(back.length == r.length);
    out[0] = std::byte{0};
    CHECK_FALSE(decode_request(std::span<const std::byte, request_size>(out.data(), request_size), back));
}

TEST_CASE("option header and option reply header")
{
    std::vector<std::byte> out;
    encode_option(out, opt_go, 0x1234);
    CHECK(out == bytes({'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 7, 0, 0, 0x12, 0x34}));

    std::vector<std::byte> rep;
    encode_option_reply(rep, opt_set_meta_context, rep_err_unknown, 17);
    REQUIRE(rep.size() == option_reply_size);
    option_reply o;
    REQUIRE(decode_option_reply(std::span<const std::byte, option_reply_size>(rep.data(), option_reply_size), o));
    CHECK(o.option == opt_set_meta_context);
    CHECK(o.type == rep_err_unknown);
    CHECK(o.length == 17);
    CHECK(is_rep_error(o.type));
    CHECK_FALSE(is_rep_error(rep_info));
    CHECK(std::string(rep_name(o.type)) == "NBD_REP_ERR_UNKNOWN");
    rep[7] = std::byte{0};
    CHECK_FALSE(decode_option_reply(std::span<const std::byte, option_reply_size>(rep.data(), option_reply_size), o));
}

TEST_CASE("simple and structured reply headers decode from the same first 16 bytes")
{
    std::vector<std::byte> simple;
    encode_simple_reply(simple, err_nospc, 42);
    REQUIRE(simple.size() == simple_reply_size);
    reply_header h;
    REQUIRE(decode_reply_start(std::span<const std::byte, simple_reply_size>(simple.data(), 16), h));
    CHECK_FALSE(h.structured);
    CHECK(h.error == err_nospc);
    CHECK(h.cookie == 42);

    std::vector<std::byte> chunk;
    encode_chunk_header(chunk, chunk_flag_done, chunk_offset_hole, 0xfeedull, 12);
    REQUIRE(chunk.size() == chunk_header_size);
    REQUIRE(decode_reply_start(std::span<const std::byte, simple_reply_size>(chunk.data(), 16), h));
    CHECK(h.structured);
    CHECK(h.flags == chunk_flag_done);
    CHECK(h.type == chunk_offset_hole);
    CHECK(h.cookie == 0xfeedull);
    CHECK(load_be32(chunk.data() + 16) == 12);

    chunk[1] = std::byte{0};
    CHECK_FALSE(decode_reply_start(std::span<const std::byte, simple_reply_size>(chunk.data(), 16), h));
}

TEST_CASE("errors map both ways; unknown ones are EIO, never success")
{
    for (int e : {EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN})
        CHECK(from_wire_error(to_wire_error(e)) == e);
    CHECK(to_wire_error(EROFS) == err_perm);
    CHECK(from_wire_error(0) == EIO);   // an error chunk carrying 0 is still an error
    CHECK(from_wire_error(9999) == EIO);
}

TEST_CASE("reader reads 64-bit values and fails softly past the end")
{
    auto in = bytes({0, 0, 0, 1, 0, 0, 0, 2, 0xab});
    reader r(in);
    std::uint64_t v = 0;
    REQUIRE(r.u64(v));
    CHECK(v == 0x0000000100000002ull);
    CHECK_FALSE(r.u64(v));
    CHECK(r.remaining() == 1);
}
