# SPDX-License-Identifier: MIT
"""A raw NBD client for scenarios that must send what well-behaved clients never would:
fixed newstyle negotiation with NBD_OPT_GO, then single requests with simple replies (or,
with structured=True, NBD_OPT_STRUCTURED_REPLY first and chunked replies)."""
import socket
import struct
import sys

REQUEST_MAGIC = 0x25609513
CMD_READ, CMD_WRITE, CMD_TRIM, CMD_CACHE = 0, 1, 4, 5
FLAG_DF = 1 << 2
CHUNK_NAMES = {0: "NONE", 1: "OFFSET_DATA", 2: "OFFSET_HOLE", 5: "BLOCK_STATUS", 0x8001: "ERROR",
               0x8002: "ERROR_OFFSET"}


class Connection:
    def __init__(self, path, name, structured=False):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        assert self.recv(18)[:16] == b"NBDMAGICIHAVEOPT"
        self.sock.sendall(struct.pack(">I", 3))                   # fixed newstyle, no zeroes
        if structured:
            self.sock.sendall(struct.pack(">QII", 0x49484156454F5054, 8, 0))   # NBD_OPT_STRUCTURED_REPLY
            _, _, rtype, length = struct.unpack(">QIII", self.recv(20))
            self.recv(length)
            if rtype != 1:
                sys.exit("structured replies refused")
        data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
        self.sock.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)   # NBD_OPT_GO
        self.size = None
        while True:
            _, _, rtype, length = struct.unpack(">QIII", self.recv(20))
            payload = self.recv(length)
            if rtype == 3 and struct.unpack(">H", payload[:2])[0] == 0:      # NBD_INFO_EXPORT
                self.size = struct.unpack(">Q", payload[2:10])[0]
            if rtype == 1:                                                  # NBD_REP_ACK
                break
            if rtype & 0x80000000:
                sys.exit("GO refused")

    def recv(self, n):
        b = b""
        while len(b) < n:
            c = self.sock.recv(n - len(b))
            if not c:
                sys.exit("server closed the connection")
            b += c
        return b

    def send(self, cmd, cookie, offset, length, payload=b"", flags=0):
        """Sends one request (the payload may be cut short on purpose)."""
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie, offset, length) + payload)

    def reply(self):
        """Reads one whole reply: [("simple", error)] or its chunks as (type, flags, payload)."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == 0x67446698:
            err, _ = struct.unpack(">IQ", self.recv(12))
            return [("simple", err)]
        assert magic == 0x668E33EF, hex(magic)
        chunks = []
        while True:
            flags, ctype, _, length = struct.unpack(">HHQI", self.recv(16))
            chunks.append((ctype, flags, self.recv(length)))
            if flags & 1:
                return chunks
            assert struct.unpack(">I", self.recv(4))[0] == 0x668E33EF

    def request(self, cmd, cookie, offset, length, payload=b""):
        """Sends one request and returns the NBD error of its simple reply."""
        self.send(cmd, cookie, offset, length, payload)
        _, err, _ = struct.unpack(">IIQ", self.recv(16))
        return err

    def close(self):
        self.sock.close()
