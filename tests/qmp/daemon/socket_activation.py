#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Starts DAEMON under systemd-socket-activate and talks QMP on the socket systemd made.

Usage: socket_activation.py DAEMON WORKDIR FDSPEC [--check-kept]

systemd-socket-activate binds WORKDIR/act.sock (FileDescriptorName "qmp") and starts the
daemon on the first connection, passing the listening socket as fd 3 with LISTEN_FDS and
LISTEN_FDNAMES, as a .socket unit does. The daemon gets
`--chardev socket,id=c,fd=FDSPEC,server=on,wait=off --monitor c`. Prints what the client saw (with --check-kept: whether the socket file survived the daemon's
quit; qemu-storage-daemon removes it, blockjobd leaves it to its owner); if the daemon refuses to start, its exit status and last error line.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "bench"))
from qmp import QMP  # noqa: E402  (the project's one QMP client, bench/qmp.py)


def main():
    daemon, work, spec = sys.argv[1], sys.argv[2], sys.argv[3]
    check_kept = "--check-kept" in sys.argv[4:]
    path = os.path.join(work, "act.sock")
    if os.path.exists(path):
        os.unlink(path)   # left by an earlier run (blockjobd keeps an activator's socket)
    act = subprocess.Popen(["systemd-socket-activate", "-l", path, "--fdname=qmp", daemon,
                            "--chardev", f"socket,id=c,fd={spec},server=on,wait=off", "--monitor", "c"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        end = time.monotonic() + 30
        while not os.path.exists(path):
            if act.poll() is not None or time.monotonic() > end:
                print("systemd-socket-activate did not create the socket:", act.stderr.read())
                return 1
            time.sleep(0.02)
        try:
            q = QMP(path, timeout=30, negotiate=False)
        except (EOFError, ConnectionResetError):
            # The daemon refused to start: show why (its last stderr line, without a timestamp).
            print("connection closed; daemon exit status:", act.wait(timeout=30))
            err = [l for l in act.stderr.read().splitlines() if l.strip()]
            print("daemon said:", err[-1].split("] ")[-1] if err else "")
            return 0
        print("greeting:", "QMP" in q.greeting)
        print("qmp_capabilities:", q.execute("qmp_capabilities"))
        print("query-version:", "qemu" in q.execute("query-version").get("return", {}))
        print("quit:", q.execute("quit"))
        rc = act.wait(timeout=30)
        print("daemon exit status:", rc)
        if check_kept:
            # The socket belongs to the activator: the daemon must not have removed it.
            print("socket file kept:", os.path.exists(path))
        return 0
    finally:
        if act.poll() is None:
            act.kill()
            act.wait()


if __name__ == "__main__":
    sys.exit(main())
