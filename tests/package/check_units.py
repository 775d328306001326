#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The systemd units as systemd reads them: `systemd-analyze verify` finds nothing to say about
blockjobd.service and blockjobd.socket, and `systemd-analyze security --offline=true` scores
the service's exposure at most MAX (default 3.0). Exit 77 (a skip) without systemd-analyze.

Usage: check_units.py SOURCE_DIR BLOCKJOBD [MAX]

verify runs on copies whose ExecStart= names the built binary (the installed path does not
exist here) with MANPATH pointing at the man page, so Documentation=man:blockjobd(8)
resolves; anything it prints (an unknown key, a bad value) fails the test."""
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile

src, binary = sys.argv[1], os.path.abspath(sys.argv[2])
limit = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
sa = shutil.which("systemd-analyze")
if not sa:
    print("SKIP: systemd-analyze is not installed")
    sys.exit(77)

problems = []
with tempfile.TemporaryDirectory() as tmp:
    units = {}
    for name in ("blockjobd.service", "blockjobd.socket"):
        text = open(os.path.join(src, "systemd", name), encoding="utf-8").read()
        if name.endswith(".service"):
            if "ExecStart=/usr/bin/blockjobd " not in text:
                problems.append("blockjobd.service: ExecStart= does not run /usr/bin/blockjobd")
            text = text.replace("ExecStart=/usr/bin/blockjobd ", f"ExecStart={binary} ")
        units[name] = os.path.join(tmp, name)
        with open(units[name], "w", encoding="utf-8") as f:
            f.write(text)
    os.makedirs(os.path.join(tmp, "man", "man8"))
    with open(os.path.join(src, "packaging", "blockjobd.8"), "rb") as f, \
            gzip.open(os.path.join(tmp, "man", "man8", "blockjobd.8.gz"), "wb") as g:
        g.write(f.read())
    env = dict(os.environ, MANPATH=os.path.join(tmp, "man"), SYSTEMD_LOG_COLOR="0")
    v = subprocess.run([sa, "verify", *units.values()], cwd=tmp, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    print(f"systemd-analyze verify: exit status {v.returncode}, {len(v.stdout.splitlines())} lines of output")
    for line in v.stdout.splitlines():
        print("  " + line)
    if v.returncode != 0 or v.stdout.strip():
        problems.append("systemd-analyze verify complained")

    # The unit as shipped (security does not run the binary).
    shipped = os.path.join(tmp, "shipped", "blockjobd.service")
    os.makedirs(os.path.dirname(shipped))
    shutil.copy(os.path.join(src, "systemd", "blockjobd.service"), shipped)
    s = subprocess.run([sa, "security", "--offline=true", "--no-pager", shipped], cwd=tmp, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    m = re.search(r"Overall exposure level for blockjobd\.service: ([0-9.]+) (\w+)", s.stdout)
    if not m:
        print(s.stdout)
        problems.append("systemd-analyze security printed no exposure level")
    else:
        score = float(m.group(1))
        print(f"systemd-analyze security --offline=true: exposure {score} {m.group(2)} (limit {limit})")
        if score > limit:
            problems.append(f"exposure {score} is above {limit}")
            print("\n".join(l for l in s.stdout.splitlines() if l.startswith("✗")))

for p in problems:
    print("FAIL:", p)
sys.exit(1 if problems else 0)
