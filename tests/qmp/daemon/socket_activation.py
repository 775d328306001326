#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Starts DAEMON under systemd-socket-activate and talks QMP on the socket systemd made.

Usage: socket_activation.py DAEMON WORKDIR FDSPEC [--check-kept] [--nbd=FDSPEC | --metrics=FDSPEC]

systemd-socket-activate binds WORKDIR/act.sock (FileDescriptorName "qmp") and starts the
daemon on the first connection, passing the listening socket as fd 3 with LISTEN_FDS and
LISTEN_FDNAMES, as a .socket unit does. The daemon gets
`--chardev socket,id=c,fd=FDSPEC,server=on,wait=off --monitor c`. With --nbd=SPEC a second
socket (fd 4, named "nbd") is passed and served by `--nbd-server addr.type=fd,addr.str=SPEC`; with --metrics=SPEC a second socket (fd 4, named
"metrics") is served by `--metrics fd:SPEC` and /metrics is fetched over it. Prints what the client saw (with --check-kept: whether the socket file survived the daemon's
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
    nbd_spec = next((a.split("=", 1)[1] for a in sys.argv[4:] if a.startswith("--nbd=")), None)
    metrics_spec = next((a.split("=", 1)[1] for a in sys.argv[4:] if a.startswith("--metrics=")), None)
    path = os.path.join(work, "act.sock")
    nbd_path = os.path.join(work, "act-nbd.sock")
    metrics_path = os.path.join(work, "act-metrics.sock")
    for p in (path, nbd_path, metrics_path):
        if os.path.exists(p):
            os.unlink(p)   # left by an earlier run (blockjobd keeps an activator's socket)
    cmd = ["systemd-socket-activate", "-l", path, "--fdname=qmp"]
    args = ["--chardev", f"socket,id=c,fd={spec},server=on,wait=off", "--monitor", "c"]
    if nbd_spec:
        # A second socket, fd 4, named "nbd": the NBD server takes it with addr.type=fd.
        cmd = ["systemd-socket-activate", "-l", path, "-l", nbd_path, "--fdname=qmp:nbd"]
        args += ["--blockdev", "driver=null-co,node-name=n0,size=1048576,read-zeroes=on",
                 "--nbd-server", f"addr.type=fd,addr.str={nbd_spec}",
                 "--export", "type=nbd,id=e0,node-name=n0,name=disk"]
    if metrics_spec:
        cmd = ["systemd-socket-activate", "-l", path, "-l", metrics_path, "--fdname=qmp:metrics"]
        args += ["--metrics", f"fd:{metrics_spec}"]
    act = subprocess.Popen(cmd + [daemon] + args,
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
        if nbd_spec:
            info = subprocess.run(["nbdinfo", "--size", f"nbd+unix:///disk?socket={nbd_path}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
            print("nbdinfo --size over the passed NBD socket:", info.stdout.strip())
        if metrics_spec:
            got = subprocess.run(["curl", "-sS", "--unix-socket", metrics_path, "http://x/metrics"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
            families = [l for l in got.stdout.splitlines() if l.startswith("# TYPE bjd_")]
            print("/metrics over the passed socket: bjd_ families:", len(families) > 0)
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
