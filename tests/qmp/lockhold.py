#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Holds QEMU-style OFD byte locks on an image until killed (used by @shell-bg).

usage: lockhold.py FILE READY-FILE BYTE[:r|w]...
QEMU locks byte 100+bit for each permission it holds and byte 200+bit for each
permission it does not share (bit 0 consistent-read, 1 write, 2 write-unchanged,
3 resize). A shared (r) lock is what QEMU itself takes; a probe fails on any lock.
"""
import fcntl
import os
import signal
import struct
import sys


def lock(fd, start, kind):
    l_type = fcntl.F_RDLCK if kind == "r" else fcntl.F_WRLCK
    # struct flock on Linux x86-64/aarch64: short, short, off_t, off_t, pid_t (+pad)
    arg = struct.pack("hhqqi4x", l_type, os.SEEK_SET, start, 1, 0)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, arg)


def main():
    path, ready = sys.argv[1], sys.argv[2]
    fd = os.open(path, os.O_RDWR)
    for spec in sys.argv[3:]:
        byte, _, kind = spec.partition(":")
        lock(fd, int(byte), kind or "r")
    with open(ready, "w") as f:
        f.write(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
