#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""qemu-storage-daemon as the source of a storage migration: it mirrors SOURCE (qcow2) into
the raw export EXPORT of the NBD server at unix socket SOCKET, over TLS with the x509 client
credentials in PKI/client (tls-hostname localhost), to READY, then block-job-complete.

usage: qsd_mirror.py WORKDIR SOCKET EXPORT SOURCE PKI

Prints one line per step; exit status 1 on a failure (the step and qsd's log)."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib"))
import bjdtest  # noqa: E402


def main():
    work, sock, export, source, pki = sys.argv[1:6]
    qmp = os.path.join(work, "peer-qmp.sock")
    log = open(os.path.join(work, "peer.log"), "wb")
    p = subprocess.Popen(["qemu-storage-daemon", "--chardev", f"socket,id=m,path={qmp},server=on,wait=off",
                          "--monitor", "chardev=m"], stdout=log, stderr=log)
    try:
        q = bjdtest.QMP(qmp, timeout=10, alive=lambda: p.poll() is None)
        q.ok("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0", "endpoint": "client",
                              "dir": os.path.join(pki, "client")})
        q.ok("blockdev-add", driver="qcow2", **{"node-name": "src"},
             file={"driver": "file", "filename": source})
        q.ok("blockdev-add", driver="raw", **{"node-name": "dst"},
             file={"driver": "nbd", "server": {"type": "unix", "path": sock}, "export": export,
                   "tls-creds": "tls0", "tls-hostname": "localhost"})
        print("qsd: connected to the export over TLS")
        q.ok("blockdev-mirror", **{"job-id": "m", "device": "src", "target": "dst", "sync": "full"})
        q.wait_event("BLOCK_JOB_READY", timeout=60, device="m")
        q.ok("block-job-complete", device="m")
        e = q.wait_event("BLOCK_JOB_COMPLETED", timeout=60, device="m")
        if "error" in e["data"]:
            raise bjdtest.Failure(f"the mirror failed: {e['data']['error']}")
        print("qsd: mirror READY, completed without error")
        q.ok("blockdev-del", **{"node-name": "dst"})
        q.cmd("quit")
        p.wait(timeout=10)
        return 0
    except (bjdtest.Failure, OSError, subprocess.TimeoutExpired) as e:
        print(f"FAILED: {e}")
        log.flush()
        with open(os.path.join(work, "peer.log"), errors="replace") as f:
            print(f.read()[-2000:])
        return 1
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
