#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""With max-connections=1: client A connects and haggles, client B connects meanwhile. Prints
whether B was kept waiting (no greeting, no EOF) while A was connected, and whether B gets
its greeting once A has gone.

usage: max_conn.py SOCKET"""
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib"))
from bjdtest import recv_exact  # noqa: E402


path = sys.argv[1]
a = socket.socket(socket.AF_UNIX)
a.connect(path)
print("A greeted:", recv_exact(a, 18)[:16] == b"NBDMAGICIHAVEOPT")
a.sendall(struct.pack(">I", 3))
b = socket.socket(socket.AF_UNIX)
b.connect(path)            # lands in the listen backlog (or is accepted: we look below)
# Round trips on A give the server every chance to accept, greet or close B.
for _ in range(20):
    a.sendall(struct.pack(">QII", 0x49484156454F5054, 3, 0))    # NBD_OPT_LIST
    while True:
        _, _, rtype, length = struct.unpack(">QIII", recv_exact(a, 20))
        recv_exact(a, length)
        if rtype == 1:
            break
b.setblocking(False)
try:
    got = b.recv(1)
    state = "closed" if got == b"" else "greeted"
except BlockingIOError:
    state = "waiting"
print("B while A is connected:", state)
a.close()
b.setblocking(True)
b.settimeout(60)
print("B after A left, greeted:", recv_exact(b, 18)[:16] == b"NBDMAGICIHAVEOPT")
