#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""NBD client that negotiates (NBD_OPT_GO), writes 4 KiB of 0x77 at 32 MiB (waiting for the
reply), then sends the header and half the payload of a second WRITE and closes the socket.

usage: half_write.py SOCKET EXPORT"""
import socket
import struct
import sys

sock_path, name = sys.argv[1], sys.argv[2].encode()
s = socket.socket(socket.AF_UNIX)
s.connect(sock_path)


def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit("server closed the connection")
        b += c
    return b


assert recv(18)[:16] == b"NBDMAGICIHAVEOPT"
s.sendall(struct.pack(">I", 3))                                    # fixed newstyle, no zeroes
data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)   # NBD_OPT_GO
while True:
    magic, opt, rtype, length = struct.unpack(">QIII", recv(20))
    recv(length)
    if rtype == 1:                                                 # NBD_REP_ACK
        break
    if rtype & 0x80000000:
        sys.exit("GO refused")
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 32 << 20, 4096) + b"\x77" * 4096)
magic, err, cookie = struct.unpack(">IIQ", recv(16))
print(f"first write: error {err}")
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 2, 40 << 20, 65536) + b"\x88" * 30000)
s.close()
print("vanished mid-payload")
