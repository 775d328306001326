// SPDX-License-Identifier: MIT
// Fuzz target: command-line option strings (qemu-storage-daemon's key=value syntax). The
// input is one option value: parsed by the keyval parser (with the implied keys the daemon
// uses) and decoded the way --blockdev and --drive decode it (keyval strings coerced through
// the generated decoders), and by the NBD --nbd-server / --export parsers, which must refuse
// bad input with std::invalid_argument and nothing else.
#include "fuzz_util.hpp"

#include "bjd/export/manager.hpp"
#include "bjd/qapi/codec.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qapi/keyval.hpp"
#include "bjd/qapi/types.hpp"

#include <stdexcept>

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

    static constexpr std::string_view implied[] = {"", "backend", "chardev"};
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
        }
    }
    try {
        (void)exports::parse_nbd_server_option(text);
    } catch (const std::invalid_argument&) {
    }
    try {
        exports::export_stats_options st;
        (void)exports::parse_export_option(text, &st);
    } catch (const std::invalid_argument&) {
    }
    return 0;
}
