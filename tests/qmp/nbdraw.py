# SPDX-License-Identifier: MIT
"""A raw NBD client for scenarios that must send what well-behaved clients never would:
fixed newstyle negotiation with NBD_OPT_GO, then single requests with simple replies."""
import socket
import struct
import sys

REQUEST_MAGIC = 0x25609513
CMD_READ, CMD_WRITE, CMD_TRIM = 0, 1, 4


class Connection:
    def __init__(self, path, name):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        assert self.recv(18)[:16] == b"NBDMAGICIHAVEOPT"
        self.sock.sendall(struct.pack(">I", 3))                   # fixed newstyle, no zeroes
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

    def send(self, cmd, cookie, offset, length, payload=b""):
        """Sends one request (the payload may be cut short on purpose)."""
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, cookie, offset, length) + payload)

    def request(self, cmd, cookie, offset, length, payload=b""):
        """Sends one request and returns the NBD error of its simple reply."""
        self.send(cmd, cookie, offset, length, payload)
        _, err, _ = struct.unpack(">IIQ", self.recv(16))
        return err

    def close(self):
        self.sock.close()
