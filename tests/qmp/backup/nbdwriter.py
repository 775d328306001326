#!/usr/bin/env python3
"""Writes an NBD export without pause until killed: qemu-io over one connection, 64 KiB
writes at cluster boundaries, 4 KiB ones inside clusters, write-zeroes and discards, at
seeded random places. Creates READY once COUNT requests are done.

usage: nbdwriter.py URI SIZE READY [COUNT]
"""
import os
import random
import subprocess
import sys

uri, size, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
count = int(sys.argv[4]) if len(sys.argv) > 4 else 50
rng = random.Random(7)
p = subprocess.Popen(["qemu-io", "-f", "raw", uri], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True, bufsize=1)


def command():
    kind = rng.randrange(8)
    if kind < 4:
        return f"write -P {rng.randrange(1, 256)} {rng.randrange(size >> 16) << 16} 64k"
    if kind < 6:
        return f"write -P {rng.randrange(1, 256)} {rng.randrange(size >> 12) << 12} 4k"
    if kind == 6:
        return f"write -z {rng.randrange(size >> 16) << 16} 128k"
    return f"discard {rng.randrange(size >> 16) << 16} 64k"


done = 0
while True:
    p.stdin.write(command() + "\n")
    p.stdin.flush()
    while True:   # up to the request's timing line (or its failure)
        line = p.stdout.readline()
        if not line:
            sys.exit(1)
        if " ops; " in line or "failed" in line:
            break
    done += 1
    if done == count:
        open(ready, "w").close()
