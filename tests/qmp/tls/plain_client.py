# SPDX-License-Identifier: MIT
"""A plaintext NBD client against a TLS-only server: prints how each option is answered
before NBD_OPT_STARTTLS (QEMU: NBD_REP_ERR_TLS_REQD, except NBD_OPT_EXPORT_NAME, which ends
the connection, and NBD_OPT_ABORT, answered and then ended).
    plain_client.py SOCKET"""
import socket
import struct
import sys

OPTS_MAGIC = 0x49484156454F5054
NAMES = {1: "EXPORT_NAME", 2: "ABORT", 3: "LIST", 5: "STARTTLS", 7: "GO", 8: "STRUCTURED_REPLY",
         10: "LIST_META_CONTEXT"}
REPLIES = {1: "ACK", 0x80000001: "ERR_UNSUP", 0x80000003: "ERR_INVALID", 0x80000005: "ERR_TLS_REQD"}


def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    recv(s, 18)
    s.sendall(struct.pack(">I", 3))
    return s


def recv(s, n):
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def ask(s, opt, data=b""):
    s.sendall(struct.pack(">QII", OPTS_MAGIC, opt, len(data)) + data)
    head = recv(s, 20)
    if head is None:
        return "connection closed"
    _, ropt, rtype, length = struct.unpack(">QIII", head)
    payload = recv(s, length) or b""
    text = REPLIES.get(rtype, hex(rtype))
    if rtype & 0x80000000 and payload:
        text += " '" + payload.decode() + "'"
    return text


def closed(s):
    try:
        return s.recv(1) == b""
    except OSError:
        return True


go = struct.pack(">I", 2) + b"f0" + struct.pack(">H", 0)
s = connect(sys.argv[1])
for opt, data in ((3, b""), (8, b""), (7, go), (10, struct.pack(">I", 2) + b"f0" + struct.pack(">I", 0)), (99, b"")):
    print(f"{NAMES.get(opt, opt)}: {ask(s, opt, data)}")
print(f"ABORT: {ask(s, 2)}; then closed: {closed(s)}")
s = connect(sys.argv[1])
print(f"EXPORT_NAME: {ask(s, 1, b'f0')}")
s = connect(sys.argv[1])
print(f"STARTTLS with data: {ask(s, 5, b'xx')}; then closed: {closed(s)}")
