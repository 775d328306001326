#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Raw NBD client that sends requests a well-behaved client never would: a READ and a WRITE
past the end of the export, and, on a read-only export, a WRITE and a TRIM. Prints each
reply's NBD error number.

usage: bad_requests.py SOCKET RW_EXPORT RO_EXPORT"""
import socket
import struct
import sys

CMD_READ, CMD_WRITE, CMD_TRIM = 0, 1, 4


def connect(path, name):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)

    def recv(n):
        b = b""
        while len(b) < n:
            c = s.recv(n - len(b))
            if not c:
                sys.exit("server closed the connection")
            b += c
        return b

    assert recv(18)[:16] == b"NBDMAGICIHAVEOPT"
    s.sendall(struct.pack(">I", 3))
    data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)   # NBD_OPT_GO
    size = None
    while True:
        _, _, rtype, length = struct.unpack(">QIII", recv(20))
        payload = recv(length)
        if rtype == 3 and struct.unpack(">H", payload[:2])[0] == 0:             # NBD_INFO_EXPORT
            size = struct.unpack(">Q", payload[2:10])[0]
        if rtype == 1:
            break
        if rtype & 0x80000000:
            sys.exit("GO refused")
    return s, recv, size


def request(s, recv, cmd, offset, length, cookie, payload=b""):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, cmd, cookie, offset, length) + payload)
    _, err, _ = struct.unpack(">IIQ", recv(16))
    return err


path, rw, ro = sys.argv[1:4]
s, recv, size = connect(path, rw)
print("read past the end:", request(s, recv, CMD_READ, size, 4096, 1))
print("write past the end:", request(s, recv, CMD_WRITE, size - 512, 4096, 2, b"\0" * 4096))
s.close()
s, recv, size = connect(path, ro)
print("write to a read-only export:", request(s, recv, CMD_WRITE, 0, 512, 3, b"\0" * 512))
print("trim on a read-only export:", request(s, recv, CMD_TRIM, 0, 512, 4))
s.close()
