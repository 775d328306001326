#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Raw NBD client that sends requests a well-behaved client never would: a READ and a WRITE
past the end of the export, and, on a read-only export, a WRITE and a TRIM. Prints each
reply's NBD error number.

usage: bad_requests.py SOCKET RW_EXPORT RO_EXPORT"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nbdraw import CMD_READ, CMD_TRIM, CMD_WRITE, Connection  # noqa: E402

path, rw, ro = sys.argv[1:4]
c = Connection(path, rw)
print("read past the end:", c.request(CMD_READ, 1, c.size, 4096))
print("write past the end:", c.request(CMD_WRITE, 2, c.size - 512, 4096, b"\0" * 4096))
c.close()
c = Connection(path, ro)
print("write to a read-only export:", c.request(CMD_WRITE, 3, 0, 512, b"\0" * 512))
print("trim on a read-only export:", c.request(CMD_TRIM, 4, 0, 512))
c.close()
