#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Docs match the tree: README.md's Layout table lists every module under lib/ (and no module
that is gone), and no source comment cites a numbered section of a private specification
(the word "spec" followed by a section sign): users do not have it, so comments cite files in
the repository or QEMU's public docs instead.

Usage: check_readme.py SOURCE_DIR"""
import os
import re
import sys

SECTION = "\u00a7"  # the section sign, spelled so that this file does not match itself
CITE = re.compile(r"\bspec\s*" + SECTION, re.I)

root = sys.argv[1]
problems = []

readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
layout = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
if not layout:
    problems.append("README.md has no Layout section")
rows = set(re.findall(r"^\| `(lib/[^`/]+)/?` \|", layout.group(1) if layout else "", re.M))
modules = {f"lib/{d}" for d in os.listdir(os.path.join(root, "lib"))
           if os.path.isdir(os.path.join(root, "lib", d))}
for m in sorted(modules - rows):
    problems.append(f"README.md's Layout table lacks {m}")
for m in sorted(rows - modules):
    problems.append(f"README.md's Layout table lists {m}, which does not exist")
print(f"{len(modules)} modules under lib/, {len(rows)} in README.md's Layout table")

cites = 0
for top in ("lib", "daemon", "tests", "schemas", "bench", "scripts", "systemd", "packaging"):
    for dirpath, _, files in os.walk(os.path.join(root, top)):
        for f in files:
            if not f.endswith(
                    (".cpp", ".hpp", ".h", ".py", ".json", ".sh", ".txt", ".qmp", ".md", ".service", ".socket")):
                continue
            path = os.path.join(dirpath, f)
            with open(path, encoding="utf-8", errors="replace") as fh:
                for no, line in enumerate(fh, 1):
                    if CITE.search(line):
                        cites += 1
                        problems.append(f"{os.path.relpath(path, root)}:{no} cites a private spec section")
print(f"{cites} comments cite a private spec section")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
