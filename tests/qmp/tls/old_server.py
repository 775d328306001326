# SPDX-License-Identifier: MIT
"""An NBD server that knows nothing of TLS: it answers every option with NBD_REP_ERR_UNSUP
(as old servers answer NBD_OPT_STARTTLS) and ends each connection at NBD_OPT_ABORT or EOF.
Listens on a unix socket until killed.
    old_server.py SOCKET"""
import os
import socket
import struct
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib"))
from bjdtest import recv_exact  # noqa: E402

OPTS_MAGIC = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REP_ACK, REP_ERR_UNSUP = 1, 0x80000001


def serve(c):
    try:
        c.sendall(b"NBDMAGIC" + struct.pack(">QH", OPTS_MAGIC, 1))   # fixed newstyle
        recv_exact(c, 4)
        while True:
            magic, opt, length = struct.unpack(">QII", recv_exact(c, 16))
            if magic != OPTS_MAGIC:
                return
            recv_exact(c, length)
            if opt == 2:   # NBD_OPT_ABORT
                c.sendall(struct.pack(">QIII", REP_MAGIC, opt, REP_ACK, 0))
                return
            c.sendall(struct.pack(">QIII", REP_MAGIC, opt, REP_ERR_UNSUP, 0))
    except (EOFError, OSError):
        pass
    finally:
        c.close()


def main():
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(8)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


main()
