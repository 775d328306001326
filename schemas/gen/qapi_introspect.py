# SPDX-License-Identifier: MIT
"""query-qmp-schema's data, built the way QEMU 7.2's scripts/qapi/introspect.py builds it:
commands and events in definition order, then every type they reach, in order of first use.
Type names other than builtins are masked as decimal strings; the empty object is "0"; all
integer types appear as the builtin "int"; optional members carry "default": null."""

import json

from qapi_schema import BUILTINS, Alternate, Command, Enum, Event, Struct

EMPTY = 'q_empty'


class Introspector:
    def __init__(self, schema):
        self.schema = schema
        self.names = {EMPTY: '0'}
        self.used = []
        self.entries = []

    def _mask(self, name):
        if name not in self.names:
            self.names[name] = str(len(self.names))
        return self.names[name]

    def _use(self, ref):
        if isinstance(ref, list):
            elem = self._use(ref[0])
            arr = '[%s]' % elem
            if ('array', elem) not in self.used:
                self.used.append(('array', elem))
            return arr
        if ref in BUILTINS:
            name = BUILTINS[ref][2]
            if ('builtin', name) not in self.used:
                self.used.append(('builtin', name))
            return name
        if ref not in self.used:
            self.used.append(ref)
        return self._mask(ref)

    @staticmethod
    def _features(e, entry):
        if e.features:
            entry['features'] = list(e.features)
        return entry

    def _members(self, s):
        out = []
        for m in s.members:
            entry = {'name': m.name, 'type': self._use(m.typ)}
            if m.optional:
                entry['default'] = None
            if m.features:
                entry['features'] = list(m.features)
            out.append(entry)
        return out

    def _type_entry(self, item):
        if isinstance(item, tuple):
            kind, name = item
            if kind == 'builtin':
                json_type = {'str': 'string', 'int': 'int', 'number': 'number', 'bool': 'boolean',
                             'null': 'null', 'any': 'value'}[name]
                return {'name': name, 'meta-type': 'builtin', 'json-type': json_type}
            return {'name': '[%s]' % name, 'meta-type': 'array', 'element-type': name}
        if item == EMPTY:
            return {'name': '0', 'meta-type': 'object', 'members': []}
        e = self.schema.by_name[item]
        entry = {'name': self._mask(item)}
        if isinstance(e, Enum):
            entry['meta-type'] = 'enum'
            members = []
            for v, feats in e.values:
                m = {'name': v}
                if feats:
                    m['features'] = list(feats)
                members.append(m)
            entry['members'] = members
            entry['values'] = [v for v, _ in e.values]
        elif isinstance(e, Alternate):
            entry['meta-type'] = 'alternate'
            entry['members'] = [{'type': self._use(t)} for _, t in e.branches]
        else:
            entry['meta-type'] = 'object'
            entry['members'] = self._members(e)
            if e.tag is not None:
                entry['tag'] = e.tag
                cases = dict(e.branches)
                entry['variants'] = [{'case': v, 'type': self._use(cases.get(v, EMPTY))
                                      if v in cases else self._use_empty()}
                                     for v, _ in e.tag_enum.values]
        return self._features(e, entry)

    def _use_empty(self):
        if EMPTY not in self.used:
            self.used.append(EMPTY)
        return '0'

    def _arg(self, name):
        return self._use_empty() if name is None else self._use(name)

    def build(self):
        for e in self.schema.entities:
            if isinstance(e, Command):
                entry = {'name': e.name, 'meta-type': 'command', 'arg-type': self._arg(e.data),
                         'ret-type': self._arg(e.returns)}
                if e.allow_oob:
                    entry['allow-oob'] = True
                self.entries.append(self._features(e, entry))
            elif isinstance(e, Event):
                entry = {'name': e.name, 'meta-type': 'event', 'arg-type': self._arg(e.data)}
                self.entries.append(self._features(e, entry))
        i = 0
        while i < len(self.used):          # grows while types reach further types
            self.entries.append(self._type_entry(self.used[i]))
            i += 1
        return self.entries


def introspection_cpp(schema, header):
    entries = Introspector(schema).build()
    text = json.dumps(entries, separators=(',', ':'))
    out = header + '#include "bjd/qapi/commands.hpp"\n\n#include <boost/json/parse.hpp>\n\n'
    out += 'namespace bjd::qapi {\n\nnamespace {\n\n'
    # Split into chunks: string literals have practical length limits in some tools.
    out += 'constexpr const char* schema_text[] = {\n'
    for i in range(0, len(text), 4000):
        out += '    R"qapi(%s)qapi",\n' % text[i:i + 4000]
    out += '};\n\n} // namespace\n\n'
    out += ('const boost::json::array& qmp_schema()\n{\n'
            '    static const boost::json::array schema = [] {\n'
            '        std::string text;\n'
            '        for (const char* part : schema_text)\n'
            '            text += part;\n'
            '        return boost::json::parse(text).as_array();\n'
            '    }();\n    return schema;\n}\n\n} // namespace bjd::qapi\n')
    return out, entries
