#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the NBD seed streams in corpus/nbd/: what a client sends after the server's
greeting (client flags, options, transmission requests), for the export "disk" (64 KiB)."""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "nbd")
IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513


def opt(code, data=b""):
    return struct.pack(">QII", IHAVEOPT, code, len(data)) + data


def go_data(name=b"disk", infos=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(
        struct.pack(">H", i) for i in infos)


def meta(name=b"disk", queries=(b"base:allocation",)):
    return struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries)) + b"".join(
        struct.pack(">I", len(q)) + q for q in queries)


def req(cmd, off, length, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", REQ, flags, cmd, cookie, off, length) + payload


FLAGS = struct.pack(">I", 3)
seeds = {
    "list-abort": FLAGS + opt(3) + opt(6, go_data(infos=(1, 2, 3))) + opt(2),
    "export-name": FLAGS + opt(1, b"disk") + req(0, 0, 4096) + req(2, 0, 0),
    "export-name-zeroes": struct.pack(">I", 1) + opt(1, b"disk") + req(3, 0, 0) + req(2, 0, 0),
    "go-structured": FLAGS + opt(8) + opt(10, meta()) + opt(9, meta(queries=())) + opt(7, go_data(infos=(3,)))
    + req(0, 0, 65536, cookie=1) + req(7, 0, 65536, cookie=2) + req(7, 4096, 8192, flags=8, cookie=3)
    + req(1, 512, 1024, flags=1, cookie=4, payload=b"\xab" * 1024)
    + req(6, 8192, 4096, flags=2, cookie=5) + req(6, 0, 4096, flags=16, cookie=6)
    + req(4, 16384, 4096, cookie=7) + req(5, 0, 4096, cookie=8) + req(0, 0, 4096, flags=4, cookie=9)
    + req(3, 0, 0, cookie=10) + req(2, 0, 0),
    "go-simple": FLAGS + opt(7, go_data()) + req(1, 65000, 1000, payload=b"x" * 1000) + req(0, 65535, 2)
    + req(9, 0, 0) + req(0, 0, 0) + req(1, 0, 40 << 20),
    "bad-options": FLAGS + opt(5) + opt(99, b"junk") + opt(8, b"x") + opt(10, meta()) + opt(7, go_data(b"nope"))
    + opt(7, b"\x00\x00\x10\x00") + opt(9, meta(queries=(b"base:", b"qemu:dirty-bitmap:x"))) + opt(8) + opt(8),
}
os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {OUT}")
