// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The command line language of QEMU's qmp-shell (python/qemu/qmp/qmp_shell.py):
///
///     blockdev-mirror job-id=m0 device=src target=dst sync=full speed=1048576
///     blockdev-add driver=raw node-name=d0 file.driver=file file.filename=/tmp/a.img
///     {"execute": "query-jobs"}
///
/// Words are split like a POSIX shell does (quotes and backslashes). Each argument is
/// KEY=VALUE; VALUE becomes a JSON number, true/false (any case), or a JSON object/array
/// when it starts with '{' or '[' and parses, and a string otherwise (so "null" and "007x"
/// stay strings). Dotted keys build nested objects: `a.b=1 a.c=2` is {"a": {"b": 1, "c": 2}}.
/// A line starting with '{' is a whole QMP request in JSON.
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::client {

/// A line that cannot be turned into a request; what() says why.
class shorthand_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct parsed_line {
    bool empty = true;             ///< blank or a comment ('#'): nothing to send
    bool raw = false;              ///< the line was a JSON request (in `request`)
    std::string command;           ///< shorthand: the command name
    boost::json::object arguments; ///< shorthand: the arguments
    boost::json::object request;   ///< raw: the request as given
};

/// Splits `line` into words as a shell does. Throws shorthand_error on an unterminated
/// quote or a trailing backslash.
std::vector<std::string> split_words(std::string_view line);

/// The JSON value a VALUE word stands for (see the file comment).
boost::json::value parse_value(std::string_view text);

/// Adds KEY=VALUE to `args`, building nested objects for dotted keys. Throws
/// shorthand_error for a word without '=', an empty key part, a key set twice, or a key
/// used both as a leaf and as an object.
void add_argument(boost::json::object& args, std::string_view word);

/// Parses one line (shorthand or raw JSON). Throws shorthand_error.
parsed_line parse_line(std::string_view line);

/// Parses `command` and its KEY=VALUE words as given on a command line (no shell
/// splitting: the shell has done it). Throws shorthand_error.
parsed_line parse_words(const std::vector<std::string>& words);

} // namespace bjd::client
