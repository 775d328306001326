// SPDX-License-Identifier: MIT
#include "bjd/qapi/commands.hpp"
#include "bjd/qapi/keyval.hpp"
#include "bjd/qapi/types.hpp"

#include <catch2/catch.hpp>

using namespace bjd::qapi;

namespace {

result<blockdev_options> blockdev_from_keyval(std::string_view text)
{
    auto kv = parse_keyval(text);
    REQUIRE(kv.has_value());
    return decode_keyval<blockdev_options>(boost::json::value(std::move(*kv)),
                                           [](const boost::json::value& v) { return decode<blockdev_options>(v); });
}

/// What the daemon does with --nbd-server / --export: keyval (with `implied` for the first
/// element), then the generated decoder of the type the QMP command takes.
template <class T>
result<T> option(std::string_view text, std::string_view implied = {})
{
    auto kv = parse_keyval(text, implied);
    if (!kv)
        return kv.error();
    return decode_keyval<T>(boost::json::value(std::move(*kv)), [](const boost::json::value& v) { return decode<T>(v); });
}

std::string error_of(const auto& r)
{
    REQUIRE_FALSE(r.has_value());
    return r.error().desc;
}

} // namespace

TEST_CASE("keyval: strings become the member's number and boolean types", "[qapi][keyval]")
{
    auto r = blockdev_from_keyval("driver=null-co,node-name=n,size=1G,read-zeroes=on");
    REQUIRE(r.has_value());
    CHECK(r->node_name == "n");
}

TEST_CASE("keyval: uint64 members take strings too (null-co latency-ns)", "[qapi][keyval]")
{
    // uint64 decode errors are worded as a bad value, not a bad type; the conversion must
    // still recognise them (qemu-storage-daemon accepts this command line).
    auto r = blockdev_from_keyval("driver=null-co,node-name=n,latency-ns=2000000");
    CHECK(r.has_value());
    auto bad = blockdev_from_keyval("driver=null-co,node-name=n,latency-ns=soon");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().desc == "Parameter 'latency-ns' expects integer");   // QEMU's words
}

TEST_CASE("keyval: --nbd-server decodes into NbdServerOptions", "[qapi][keyval]")
{
    auto u = option<nbd_server_options>("addr.type=unix,addr.path=/run/a,,b.sock,max-connections=4");
    REQUIRE(u.has_value());
    CHECK(u->addr.type == socket_address_type::unix);
    REQUIRE(u->addr.u.unix);
    CHECK(u->addr.u.unix->path == "/run/a,b.sock");
    CHECK(u->max_connections == std::optional<std::uint32_t>(4));
    CHECK_FALSE(u->tls_creds);

    auto t = option<nbd_server_options>(
        "addr.type=inet,addr.host=127.0.0.1,addr.port=10809,tls-creds=t0,tls-authz=a0,max-connections=0x10");
    REQUIRE(t.has_value());
    REQUIRE(t->addr.u.inet);
    CHECK(t->addr.u.inet->host == "127.0.0.1");
    CHECK(t->addr.u.inet->port == "10809");
    CHECK(t->tls_creds == std::optional<std::string>("t0"));
    CHECK(t->tls_authz == std::optional<std::string>("a0"));
    CHECK(t->max_connections == std::optional<std::uint32_t>(16));

    auto fd = option<nbd_server_options>("addr.type=fd,addr.str=nbd");
    REQUIRE(fd.has_value());
    REQUIRE(fd->addr.u.fd);
    CHECK(fd->addr.u.fd->str == "nbd");

    // qemu-storage-daemon 7.2's words for the same command lines.
    CHECK(error_of(option<nbd_server_options>("max-connections=4")) == "Parameter 'addr' is missing");
    CHECK(error_of(option<nbd_server_options>("addr.type=inet,addr.host=127.0.0.1")) ==
          "Parameter 'addr.port' is missing");
    CHECK(error_of(option<nbd_server_options>("addr.type=unix,addr.path=/x,foo=1")) == "Parameter 'foo' is unexpected");
    CHECK(error_of(option<nbd_server_options>("addr.type=inet,addr.host=h,addr.port=1,max-connections=x")) ==
          "Parameter 'max-connections' expects integer");
}

TEST_CASE("keyval: --export decodes into BlockExportOptions", "[qapi][keyval]")
{
    auto e = option<block_export_options>(
        "type=nbd,id=e0,node-name=n0,name=disk,writable=on,writethrough=off,bitmaps.0=b0,bitmaps.1.node=n1,"
        "bitmaps.1.name=b1,description=a,,b",
        "type");
    REQUIRE(e.has_value());
    CHECK(e->type == block_export_type::nbd);
    CHECK(e->id == "e0");
    CHECK(e->node_name == "n0");
    CHECK(e->writable == std::optional<bool>(true));
    CHECK(e->writethrough == std::optional<bool>(false));
    REQUIRE(e->u.nbd);
    CHECK(e->u.nbd->name == std::optional<std::string>("disk"));
    CHECK(e->u.nbd->description == std::optional<std::string>("a,b"));
    REQUIRE(e->u.nbd->bitmaps.has_value());
    REQUIRE(e->u.nbd->bitmaps->size() == 2);
    // A bitmap by name (the string branch of BlockDirtyBitmapOrStr), then a node/name pair.
    auto* by_name = std::get_if<std::string>(&(*e->u.nbd->bitmaps)[0]);
    REQUIRE(by_name);
    CHECK(*by_name == "b0");
    auto* pair = std::get_if<box<block_dirty_bitmap>>(&(*e->u.nbd->bitmaps)[1]);
    REQUIRE(pair);
    CHECK((*pair)->node == "n1");
    CHECK((*pair)->name == "b1");

    // The implied first key.
    auto implied = option<block_export_options>("nbd,id=e1,node-name=d", "type");
    REQUIRE(implied.has_value());
    CHECK(implied->type == block_export_type::nbd);

    // qemu-storage-daemon 7.2's words for the same command lines.
    CHECK(error_of(option<block_export_options>("type=nbd,id=e0,node-name=n0,foo=1", "type")) ==
          "Parameter 'foo' is unexpected");
    CHECK(error_of(option<block_export_options>("type=nbd,id=e0", "type")) == "Parameter 'node-name' is missing");
    CHECK(error_of(option<block_export_options>("type=nbd,id=e0,node-name=n0,writable=maybe", "type")) ==
          "Parameter 'writable' expects 'on' or 'off'");
    CHECK(error_of(option<block_export_options>("type=xx,id=e0,node-name=n0", "type")) ==
          "Parameter 'type' does not accept value 'xx'");
    CHECK(error_of(option<block_export_options>("nbd,id=e0,node-name=n0,bitmaps.1=x", "type")) ==
          "Parameter 'bitmaps.0' missing");
    CHECK(error_of(option<block_export_options>("nbd,id=e0,node-name=n0,bitmaps.0=a,bitmaps.x=b", "type")) ==
          "Parameters 'bitmaps.*' used inconsistently");
    CHECK(error_of(option<block_export_options>("nbd,id=e0,node-name=n0,bitmaps.x=b", "type")) ==
          "Invalid parameter type for 'bitmaps', expected: array");
    CHECK(error_of(option<block_export_options>("nbd,id=e0,node-name=n0,bitmaps.0.node=n0", "type")) ==
          "Parameter 'bitmaps.0.name' is missing");
}
