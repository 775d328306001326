#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Negotiates structured replies and prints how the server answers READs and CACHE: one line
per chunk (type, DONE flag, offset, length; data chunks also show their first byte).

usage: read_chunks.py SOCKET EXPORT [df|nodf|cache]:OFFSET:LENGTH ..."""
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nbdraw import CHUNK_NAMES, CMD_CACHE, CMD_READ, FLAG_DF, Connection  # noqa: E402

c = Connection(sys.argv[1], sys.argv[2], structured=True)
for cookie, spec in enumerate(sys.argv[3:], 1):
    mode, off, length = spec.split(":")
    off, length = int(off, 0), int(length, 0)
    c.send(CMD_CACHE if mode == "cache" else CMD_READ, cookie, off, length, flags=FLAG_DF if mode == "df" else 0)
    print(f"{spec}:")
    for item in c.reply():
        if item[0] == "simple":
            print(f"  simple reply, error {item[1]}")
            continue
        ctype, flags, payload = item
        done = " DONE" if flags & 1 else ""
        name = CHUNK_NAMES.get(ctype, hex(ctype))
        if ctype == 1:
            print(f"  {name}{done} offset {struct.unpack('>Q', payload[:8])[0]} length {len(payload) - 8}"
                  f" first byte 0x{payload[8]:02x}")
        elif ctype == 2:
            o, n = struct.unpack(">QI", payload)
            print(f"  {name}{done} offset {o} length {n}")
        elif ctype & 0x8000:
            print(f"  {name}{done} error {struct.unpack('>I', payload[:4])[0]}")
        else:
            print(f"  {name}{done} length {len(payload)}")
c.close()
