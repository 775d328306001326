// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// JSON in QEMU 7.2's QMP dialect (QEMU's docs/interop/qmp-spec.rst; QEMU's JSON parser in qobject/): an incremental streamer that frames and
/// parses client input exactly like QEMU's json-lexer/json-streamer/json-parser, and a writer
/// that produces QEMU's output format.
///
/// Input dialect: RFC 8259 plus single-quoted strings, the `\'` escape, `\u0000` stored as the
/// modified-UTF-8 pair C0 80, and keywords/numbers classified like QEMU (int64, else uint64,
/// else double). Strings in the produced values hold the raw (modified UTF-8) bytes.
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::qmp {

/// One complete input message: a value, or a parse error whose `error` is the exact desc QEMU
/// sends (class GenericError, never with an id).
struct json_message {
    std::optional<boost::json::value> value;
    std::string error;   ///< non-empty exactly when `value` is empty

    bool ok() const noexcept { return value.has_value(); }
};

/// QEMU's per-message limits.
inline constexpr std::size_t json_max_token_size = std::size_t{64} << 20;   ///< bytes of token text
inline constexpr std::size_t json_max_token_count = std::size_t{2} << 20;   ///< tokens
inline constexpr int json_max_nesting = 1024;                               ///< open braces+brackets

/// Frames a byte stream into messages. Feed arbitrary chunks; a message is delivered as soon
/// as QEMU would deliver it (brace/bracket counts back to zero or negative, or a scalar token at
/// depth zero; see QEMU's JSON parser in qobject/ for the "wedge" this implies). Errors reset the message state;
/// after a lexical error input is skipped until a structural or control character.
class json_streamer {
public:
    json_streamer();
    ~json_streamer();
    json_streamer(json_streamer&&) noexcept;
    json_streamer& operator=(json_streamer&&) noexcept;

    /// Consumes `bytes`; every message completed by them is appended to `out` in order.
    void feed(std::string_view bytes, std::vector<json_message>& out);

    /// End of input: completes a pending token and parses what is left (QEMU's flush).
    void flush(std::vector<json_message>& out);

    /// Convenience for tests: feed + collect.
    std::vector<json_message> feed(std::string_view bytes);

private:
    struct impl;
    impl* impl_;
};

/// Parses one complete text (feed + flush). Returns every message found.
std::vector<json_message> parse_json_messages(std::string_view text);

/// Member order of written objects.
enum class json_order {
    qdict,       ///< QEMU's QDict iteration order (hash buckets): byte-identical to qemu output
    insertion,   ///< as stored in the boost::json::object
};

struct json_write_options {
    bool pretty = false;                       ///< 4-space indent, one member per line
    json_order order = json_order::qdict;
};

/// Appends the QEMU rendering of `v` to `out` (no trailing newline): compact form uses ", "
/// and ": ", output is pure ASCII (see json_quote), integers print exactly, doubles as %.17g
/// (non-finite doubles print as 1e999 / -1e999 / null instead of QEMU's invalid `inf`).
void write_json(std::string& out, const boost::json::value& v, const json_write_options& opts = {});

/// `write_json` into a new string.
std::string to_json_text(const boost::json::value& v, const json_write_options& opts = {});

/// One server message on the wire: the rendering plus CR LF (with pretty, every line ends CR LF).
std::string to_wire_message(const boost::json::value& v, const json_write_options& opts = {});

/// Appends `s` as a quoted JSON string, QEMU style: `"` `\` and BS FF LF CR TAB use short
/// escapes, other code points < 0x20 or >= 0x7F become `\uXXXX` (upper-case hex, surrogate pairs
/// beyond the BMP), invalid (modified) UTF-8 becomes `\uFFFD`, C0 80 becomes `\u0000`.
void json_quote(std::string& out, std::string_view s);

/// The order in which QEMU's QDict iterates `keys` (bucket = tdb_hash % 512 ascending; newer
/// insertions first within a bucket). Returns indices into `keys`.
std::vector<std::size_t> qdict_order(const std::vector<std::string_view>& keys);

} // namespace bjd::qmp
