#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Docs match code: every long option `blockjobd --help` lists is in the man page, and the
man page documents no option the binary does not have. With the block-core schema as a third
argument, both also name every driver of its BlockdevDriver enum. The man page has the
sections an operator looks for (EXAMPLES, FILES, SIGNALS, EXIT STATUS) and SIGNALS names
every signal the daemon handles."""
import re
import subprocess
import sys

binary, manpage = sys.argv[1], sys.argv[2]
schema = sys.argv[3] if len(sys.argv) > 3 else None
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

undocumented = []
sections = re.findall(r"^\.SH\s+\"?([^\"\n]+?)\"?\s*$", man_text, re.M)
for want in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXAMPLES", "FILES", "SIGNALS", "EXIT STATUS"):
    if want not in sections:
        undocumented.append(f"man page has no {want} section")
signals = re.search(r"^\.SH SIGNALS\n(.*?)^\.SH", man_text, re.M | re.S)
for sig in ("SIGTERM", "SIGINT", "SIGHUP"):
    if not signals or sig not in signals.group(1):
        undocumented.append(f"man page's SIGNALS does not describe {sig}")
print(f"man page sections: {', '.join(sections)}")
if schema:
    enum = re.search(r"'enum':\s*'BlockdevDriver',\s*'data':\s*\[([^\]]*)\]",
                     open(schema, encoding="utf-8").read())
    drivers = re.findall(r"'([^']+)'", enum.group(1)) if enum else []
    if not drivers:
        undocumented.append("no BlockdevDriver enum in the schema")
    man_words = set(re.findall(r"[\w-]+", re.sub(r"\\f[BIRP]", "", man_text)))
    help_words = set(re.findall(r"[\w-]+", help_text))
    for d in drivers:
        if d not in help_words:
            undocumented.append(f"--help does not name driver {d}")
        if d not in man_words:
            undocumented.append(f"man page does not name driver {d}")
    print(f"{len(drivers)} drivers in the schema")
for u in undocumented:
    print(u)
sys.exit(1 if missing or extra or undocumented else 0)
