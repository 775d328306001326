// SPDX-License-Identifier: MIT
/// \file
/// The completion index over query-qmp-schema and the completer.
#include "bjd/client/completion.hpp"

#include "bjd/client/shorthand.hpp"

#include <boost/json/object.hpp>

#include <algorithm>
#include <set>

namespace bjd::client {

namespace json = boost::json;

namespace {

const std::vector<std::string> no_strings;

std::string str(const json::object& o, std::string_view key)
{
    const json::value* v = o.if_contains(key);
    return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

struct builder {
    std::map<std::string, const json::object*> types;   // by (possibly masked) name
    std::set<std::string> paths;
    std::map<std::string, std::vector<std::string>> values;

    const json::object* type(const std::string& name) const
    {
        auto it = types.find(name);
        return it == types.end() ? nullptr : it->second;
    }

    /// The object type behind `name`, looking through alternates (BlockdevRef's object
    /// branch); nullptr if there is none.
    const json::object* object_type(const std::string& name) const
    {
        const json::object* t = type(name);
        if (!t) {
            return nullptr;
        }
        std::string meta = str(*t, "meta-type");
        if (meta == "object") {
            return t;
        }
        if (meta == "alternate") {
            if (auto* ms = t->if_contains("members"); ms && ms->is_array()) {
                for (const auto& m : ms->get_array()) {
                    if (m.is_object()) {
                        if (auto* o = object_type(str(m.get_object(), "type")); o) {
                            return o;
                        }
                    }
                }
            }
        }
        return nullptr;
    }

    void leaf_values(const std::string& path, const std::string& type_name)
    {
        const json::object* t = type(type_name);
        if (!t) {
            return;
        }
        std::string meta = str(*t, "meta-type");
        std::vector<std::string> vals;
        if (meta == "enum") {
            if (auto* vs = t->if_contains("values"); vs && vs->is_array()) {
                for (const auto& v : vs->get_array()) {
                    if (v.is_string()) {
                        vals.emplace_back(v.get_string());
                    }
                }
            }
        } else if (meta == "builtin" && str(*t, "json-type") == "boolean") {
            vals = {"false", "true"};
        }
        if (!vals.empty()) {
            std::sort(vals.begin(), vals.end());
            values[path] = std::move(vals);
        }
    }

    /// Adds the members of object type `t` under `prefix`, recursing into nested objects
    /// (down to `depth` levels) and into every variant of a union.
    void members(const json::object& t, const std::string& prefix, int depth)
    {
        if (auto* ms = t.if_contains("members"); ms && ms->is_array()) {
            for (const auto& mv : ms->get_array()) {
                if (!mv.is_object()) {
                    continue;
                }
                const auto& m = mv.get_object();
                std::string path = prefix + str(m, "name");
                std::string tname = str(m, "type");
                paths.insert(path);
                leaf_values(path, tname);
                if (depth > 0) {
                    if (const json::object* sub = object_type(tname); sub && sub != &t) {
                        members(*sub, path + ".", depth - 1);
                    }
                }
            }
        }
        if (auto* vs = t.if_contains("variants"); vs && vs->is_array()) {
            for (const auto& vv : vs->get_array()) {
                if (vv.is_object()) {
                    if (const json::object* sub = type(str(vv.get_object(), "type")); sub && sub != &t) {
                        members(*sub, prefix, depth);
                    }
                }
            }
        }
    }
};

} // namespace

schema_index schema_index::from_introspection(const json::array& schema)
{
    builder b;
    std::vector<const json::object*> commands;
    for (const auto& v : schema) {
        if (!v.is_object()) {
            continue;
        }
        const auto& o = v.get_object();
        b.types[str(o, "name")] = &o;
        if (str(o, "meta-type") == "command") {
            commands.push_back(&o);
        }
    }
    schema_index idx;
    for (const json::object* c : commands) {
        std::string name = str(*c, "name");
        idx.commands_.push_back(name);
        b.paths.clear();
        b.values.clear();
        if (const json::object* at = b.type(str(*c, "arg-type")); at) {
            b.members(*at, "", 2);
        }
        idx.args_[name] = std::vector<std::string>(b.paths.begin(), b.paths.end());
        for (auto& [path, vals] : b.values) {
            idx.values_[name + " " + path] = std::move(vals);
        }
    }
    std::sort(idx.commands_.begin(), idx.commands_.end());
    return idx;
}

const std::vector<std::string>& schema_index::arguments(std::string_view command) const
{
    auto it = args_.find(command);
    return it == args_.end() ? no_strings : it->second;
}

const std::vector<std::string>& schema_index::values(std::string_view command, std::string_view argument) const
{
    std::string key(command);
    key += ' ';
    key += argument;
    auto it = values_.find(key);
    return it == values_.end() ? no_strings : it->second;
}

completion complete(const schema_index& index, std::string_view before, std::string_view word)
{
    completion c;
    auto first = before.find_first_not_of(" \t");
    if (first != std::string_view::npos && before[first] == '{') {
        return c;
    }
    if (first == std::string_view::npos && word.starts_with('{')) {
        return c;
    }
    std::vector<std::string> words;
    try {
        words = split_words(before);
    } catch (const shorthand_error&) {
        return c;   // inside an open quote
    }
    auto prefixed = [](const std::vector<std::string>& all, std::string_view p, std::string_view add,
                       const std::set<std::string>& skip) {
        std::vector<std::string> r;
        for (const auto& s : all) {
            if (s.starts_with(p) && !skip.contains(s)) {
                r.push_back(s + std::string(add));
            }
        }
        return r;
    };
    if (words.empty()) {
        c.candidates = prefixed(index.commands(), word, "", {});
        return c;
    }
    const std::string& command = words[0];
    if (auto eq = word.find('='); eq != std::string_view::npos) {
        std::string_view key = word.substr(0, eq + 1);
        std::string arg(word.substr(0, eq));
        c.candidates = prefixed(index.values(command, arg), word.substr(eq + 1), "", {});
        for (auto& s : c.candidates) {
            s.insert(0, key);
        }
        return c;
    }
    std::set<std::string> given;
    for (std::size_t i = 1; i < words.size(); ++i) {
        auto eq = words[i].find('=');
        given.insert(words[i].substr(0, eq));
    }
    c.candidates = prefixed(index.arguments(command), word, "=", given);
    c.append_space = false;
    return c;
}

} // namespace bjd::client
