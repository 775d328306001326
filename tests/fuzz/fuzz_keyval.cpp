// SPDX-License-Identifier: MIT
// Fuzz target: command-line option strings (qemu-storage-daemon's key=value syntax). The
// input is one option value: parsed by the keyval parser (with the implied keys the daemon
// uses) and decoded the way --blockdev and --drive decode it (keyval strings coerced through
// the generated decoders), as --nbd-server (NbdServerOptions) and as --export
// (BlockExportOptions, with its implied "type"); bad input must be refused with an error.
#include "fuzz_util.hpp"

#include "bjd/qapi/codec.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qapi/keyval.hpp"
#include "bjd/qapi/types.hpp"

namespace {

using namespace bjd;
namespace json = boost::json;

template <class T>
void decode_as(const json::object& kv)
{
    auto r = qapi::decode_keyval<T>(json::value(kv), [](const json::value& v) { return qapi::decode<T>(v); });
    if (!r && r.error().desc.empty())
        std::abort();
    if (r)
        (void)qapi::to_json(*r);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size > (16u << 10))
        return 0;
    fuzz::quiet_logs();
    std::string_view text(reinterpret_cast<const char*>(data), size);

    static constexpr std::string_view implied[] = {"", "backend", "chardev", "type"};
    for (std::string_view key : implied) {
        auto kv = qapi::parse_keyval(text, key);
        if (!kv) {
            if (kv.error().desc.empty())
                std::abort();
            continue;
        }
        if (key.empty()) {
            decode_as<qapi::blockdev_options>(*kv);
            decode_as<qapi::x_drive_add_args>(*kv);
            decode_as<qapi::blockdev_create_options>(*kv);
            decode_as<qapi::nbd_server_options>(*kv);
        }
        if (key == "type")
            decode_as<qapi::block_export_options>(*kv);
    }
    return 0;
}
