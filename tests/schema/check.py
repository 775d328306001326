#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Generator test: check.py GENERATOR SCHEMA.json

Runs the generator on SCHEMA.json and compares its stderr with SCHEMA.err (the schema's
directory is stripped from file names). A non-empty .err means the generator must fail with
exactly that message; an empty or missing .err means it must succeed, and then the output is
linted: command and event names follow the naming rules, and every command and event has its
handler declaration, command-table entry or emitter in the generated C++.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

COMMAND_RE = re.compile(r'^[a-z][a-z0-9]*(-[a-z0-9]+)*$')
EVENT_RE = re.compile(r'^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$')
# QEMU's historical spellings; anything else with an underscore is a naming error.
LEGACY = {'qmp_capabilities', 'block_resize', 'block_set_io_throttle'}


def lint(out_dir, intro_path):
    problems = []
    entries = json.load(open(intro_path))
    with open(os.path.join(out_dir, 'include/bjd/qapi/commands.hpp')) as f:
        commands_hpp = f.read()
    with open(os.path.join(out_dir, 'src/commands.cpp')) as f:
        commands_cpp = f.read()
    with open(os.path.join(out_dir, 'include/bjd/qapi/events.hpp')) as f:
        events_hpp = f.read()
    names = [e['name'] for e in entries]
    if len(names) != len(set(names)):
        problems.append('introspection names are not unique')
    for e in entries:
        if e['meta-type'] == 'command':
            n = e['name']
            if not COMMAND_RE.match(n) and n not in LEGACY:
                problems.append("command '%s' is not lowercase-dash" % n)
            if '{"%s", ' % n not in commands_cpp:
                problems.append("command '%s' is missing from command_table()" % n)
            fn = 'qmp_' + n.replace('-', '_')
            if n != 'query-qmp-schema' and fn + '(qmp::context& ctx' not in commands_hpp:
                problems.append("command '%s' has no handler declaration %s" % (n, fn))
        elif e['meta-type'] == 'event':
            n = e['name']
            if not EVENT_RE.match(n):
                problems.append("event '%s' is not UPPER_SNAKE" % n)
            if 'void emit_%s(event_sink& sink' % n.lower() not in events_hpp:
                problems.append("event '%s' has no emitter" % n)
        elif not re.match(r'^(\d+|\[.*\]|str|int|number|bool|null|any)$', e['name']):
            problems.append("type name '%s' is not masked" % e['name'])
    return problems


def main():
    gen, schema = sys.argv[1], sys.argv[2]
    err_path = os.path.splitext(schema)[0] + '.err'
    expected = open(err_path).read().strip() if os.path.exists(err_path) else ''
    with tempfile.TemporaryDirectory() as tmp:
        intro = os.path.join(tmp, 'introspection.json')
        p = subprocess.run([sys.executable, gen, schema, '--out', tmp, '--dump-introspection', intro],
                           capture_output=True, text=True)
        actual = p.stderr.replace(os.path.dirname(schema) + os.sep, '').strip()
        if actual != expected:
            print('stderr differs\nexpected: %s\nactual:   %s' % (expected, actual))
            return 1
        if expected:
            if p.returncode != 1:
                print('expected exit status 1, got %d' % p.returncode)
                return 1
            if os.listdir(tmp):
                print('the generator wrote output despite the error')
                return 1
            return 0
        if p.returncode != 0:
            print('expected success, got exit status %d' % p.returncode)
            return 1
        problems = lint(tmp, intro)
        for prob in problems:
            print(prob)
        return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
