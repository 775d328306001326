#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""NBD client that negotiates (NBD_OPT_GO), writes 4 KiB of 0x77 at 32 MiB (waiting for the
reply), then sends the header and half the payload of a second WRITE and closes the socket.

usage: half_write.py SOCKET EXPORT"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nbdraw import CMD_WRITE, Connection  # noqa: E402

c = Connection(sys.argv[1], sys.argv[2])
err = c.request(CMD_WRITE, 1, 32 << 20, 4096, b"\x77" * 4096)
print(f"first write: error {err}")
c.send(CMD_WRITE, 2, 40 << 20, 65536, b"\x88" * 30000)
c.close()
print("vanished mid-payload")
