// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// Tab completion from the server's own schema (`query-qmp-schema`, QEMU's
/// docs/devel/qapi-code-gen.rst "Client JSON Protocol introspection"): command names,
/// argument names (dotted paths into nested objects and the members of every union
/// variant, as the shorthand's dotted keys spell them) and the values of enum and bool
/// arguments.
#include <boost/json/array.hpp>

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::client {

class schema_index {
public:
    schema_index() = default;

    /// Builds the index from the "return" of query-qmp-schema.
    static schema_index from_introspection(const boost::json::array& schema);

    /// Every command, sorted.
    const std::vector<std::string>& commands() const noexcept { return commands_; }

    /// The argument paths of `command` ("speed", "file.filename"), sorted; empty if unknown.
    const std::vector<std::string>& arguments(std::string_view command) const;

    /// The values an argument takes if it is an enum or a bool; empty otherwise.
    const std::vector<std::string>& values(std::string_view command, std::string_view argument) const;

private:
    std::vector<std::string> commands_;
    std::map<std::string, std::vector<std::string>, std::less<>> args_;
    std::map<std::string, std::vector<std::string>, std::less<>> values_;   // "cmd arg"
};

/// What to offer for the word being typed.
struct completion {
    std::vector<std::string> candidates;   ///< full replacements for `word`, sorted
    bool append_space = true;              ///< after a unique match (not after "key=")
};

/// Completes `word`, the text from the start of the current word to the cursor, given
/// `before`, the line before that word. The first word is a command; later words are
/// "arg=" (arguments already given are left out) or, after '=', a value.
/// Lines starting with '{' (raw JSON) get nothing.
completion complete(const schema_index& index, std::string_view before, std::string_view word);

} // namespace bjd::client
