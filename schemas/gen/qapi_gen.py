#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""blockjobd's QAPI generator: schemas/*.json -> C++ (see schemas/README.md).

usage: qapi_gen.py SCHEMA.json --out DIR [--dump-introspection FILE]

Errors go to stderr as `file:line: message`; the exit status is then 1 and nothing is written.
"""

import argparse
import json
import os
import sys

sys.dont_write_bytecode = True   # keep the source tree clean when run from the build
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qapi_cpp import HEADER, CppGen  # noqa: E402
from qapi_introspect import introspection_cpp  # noqa: E402
from qapi_parser import QapiError, parse_files  # noqa: E402
from qapi_schema import Schema  # noqa: E402


def write_if_changed(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path, encoding='utf-8') as f:
            if f.read() == text:
                return   # unchanged: dependents are not rebuilt (Ninja restats custom commands)
    except OSError:
        pass
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('schema')
    ap.add_argument('--out', help='output directory (include/bjd/qapi/*.hpp, src/*.cpp)')
    ap.add_argument('--dump-introspection', help='also write query-qmp-schema JSON here')
    args = ap.parse_args(argv)
    try:
        schema = Schema(parse_files(args.schema))
        gen = CppGen(schema)
        files = {
            'include/bjd/qapi/types.hpp': gen.types_hpp(),
            'src/types.cpp': gen.types_cpp(),
            'include/bjd/qapi/events.hpp': gen.events_hpp(),
            'src/events.cpp': gen.events_cpp(),
            'include/bjd/qapi/commands.hpp': gen.commands_hpp(),
            'src/commands.cpp': gen.commands_cpp(),
        }
        files['src/introspection.cpp'], entries = introspection_cpp(schema, HEADER)
    except QapiError as e:
        print(str(e), file=sys.stderr)
        return 1
    if args.out:
        for rel, text in files.items():
            write_if_changed(os.path.join(args.out, rel), text)
    if args.dump_introspection:
        with open(args.dump_introspection, 'w', encoding='utf-8') as f:
            json.dump(entries, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
