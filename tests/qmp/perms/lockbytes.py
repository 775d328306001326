#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Prints the QEMU-style image locks held on each FILE, from /proc/locks.

usage: lockbytes.py FILE...
QEMU's file-posix locks byte 100+bit (shared) for each permission its node uses and
byte 200+bit for each permission it does not share (bit 0 consistent-read, 1 write,
2 write-unchanged, 3 resize). The union over every process and descriptor is printed
as "FILE: uses A B; unshares C D" (or "FILE: no locks"); other locked bytes are listed
as numbers. Locks of other files (other inodes) are ignored.
"""
import os
import sys

PERMS = ["consistent-read", "write", "write-unchanged", "resize"]


def held(st):
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    out = set()
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            # "N: OFDLCK ADVISORY READ PID MAJ:MIN:INODE START END" ("->" lines are waiters)
            if len(parts) < 8 or parts[1] == "->":
                continue
            maj, mnr, ino = parts[5].split(":")
            if int(ino) != st.st_ino or (int(maj, 16), int(mnr, 16)) != dev:
                continue
            start, end = int(parts[6]), parts[7]
            end = start if end == "EOF" else int(end)
            out.update(range(start, min(end, start + 1000) + 1))
    return out


def main():
    for path in sys.argv[1:]:
        b = held(os.stat(path))
        uses = [PERMS[i] for i in range(4) if 100 + i in b]
        unshares = [PERMS[i] for i in range(4) if 200 + i in b]
        other = sorted(x for x in b if x - 100 not in range(4) and x - 200 not in range(4))
        desc = []
        if uses:
            desc.append("uses " + " ".join(uses))
        if unshares:
            desc.append("unshares " + " ".join(unshares))
        if other:
            desc.append("other bytes " + " ".join(map(str, other)))
        print("%s: %s" % (os.path.basename(path), "; ".join(desc) or "no locks"))


if __name__ == "__main__":
    main()
