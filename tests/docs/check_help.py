#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Docs match code: every long option `blockjobd --help` lists is in the man page, and the
man page documents no option the binary does not have."""
import re
import subprocess
import sys

binary, manpage = sys.argv[1], sys.argv[2]
help_text = subprocess.run([binary, "--help"], check=True, capture_output=True, text=True).stdout
man_text = open(manpage, encoding="utf-8").read().replace("\\-", "-")

help_opts = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text))
man_opts = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", man_text))

missing = sorted(help_opts - man_opts)
extra = sorted(man_opts - help_opts)
for o in missing:
    print(f"man page lacks {o}")
for o in extra:
    print(f"man page documents {o}, which --help does not list")
print(f"{len(help_opts)} options in --help, {len(man_opts)} in the man page")
sys.exit(1 if missing or extra else 0)
