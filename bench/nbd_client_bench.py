#!/usr/bin/env python3
"""Storage migration's copy, daemon to daemon over NBD, with TLS off and on.

usage: nbd_client_bench.py OURS_BINARY [--size-mib N] [--runs N] [--source-aio io_uring|threads]
                           [--cases local,pair,pair-tls] [--json FILE]

The copy of `virsh migrate --copy-storage-all` without shared storage: a destination daemon
exports an empty raw file over NBD on TCP 127.0.0.1, and a source daemon runs
blockdev-mirror sync=full from a raw image into a raw node over an nbd node connected to it,
timed up to BLOCK_JOB_READY. Each daemon is paired with itself: blockjobd to blockjobd and
qemu-storage-daemon to qemu-storage-daemon, in the same run, on the same files.

cases:
  local     the same mirror into a local file: the ceiling for the copies over NBD
  pair      over NBD, plaintext
  pair-tls  over NBD with tls-creds-x509 at both ends (certificates from
            tests/qmp/tls/gencerts.sh), as libvirt's --tls migration

The source is a fully allocated image of random data. Every file node (the source, the local
target, the far daemon's target) is opened with cache.direct=on, as bench/suite.py's copies
are, so the disk sets the pace of the local mirror and the copies over NBD show what the
network path and TLS cost on top of it. Every target is checked with qemu-img compare. Repetitions interleave the daemons; the ratios are
medians of per-repetition ratios, as bench/suite.py computes them:

  blockjobd pair / blockjobd local   how close the copy over NBD comes to a local one
  blockjobd pair / qsd pair          against qemu-storage-daemon's pair

`--source-aio threads` (QEMU's default for aio) runs the source file node with the thread
pool instead of io_uring.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from qmp import QMP  # noqa: E402

MiB = 1 << 20
GENCERTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "qmp", "tls", "gencerts.sh")
CASES = ("local", "pair", "pair-tls")


def make_source(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


def disk_file(path, aio):
    """A file node as the suite's copies use them: O_DIRECT, so the disk sets the pace."""
    return {"driver": "file", "filename": path, "aio": aio, "cache": {"direct": True}}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    def __init__(self, binary, work, name):
        self.sock = os.path.join(work, f"{name}.sock")
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.proc = subprocess.Popen([binary, "--chardev", f"socket,id=c,path={self.sock},server=on,wait=off",
                                      "--monitor", "c"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.q = QMP(self.sock)

    def tls(self, work, endpoint):
        self.q.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0", "endpoint": endpoint,
                                    "dir": os.path.join(work, "pki", endpoint)})

    def stop(self):
        try:
            self.q.execute("quit")
            self.q.close()
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def mirror_once(binary, work, src, size, case, source_aio):
    """MiB/s of one mirror to READY."""
    dst = os.path.join(work, "dst.img")
    with open(dst, "wb") as f:
        f.truncate(size)
    tls = case == "pair-tls"
    far = near = None
    try:
        if case == "local":
            target = disk_file(dst, "io_uring")
        else:
            far = Daemon(binary, work, "far")
            port = free_port()
            if tls:
                far.tls(work, "server")
            far.q.cmd("blockdev-add", **{"driver": "raw", "node-name": "t", "file": disk_file(dst, "io_uring")})
            far.q.cmd("nbd-server-start", addr={"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}},
                      **({"tls-creds": "tls0"} if tls else {}))
            r = far.q.execute("block-export-add", {"type": "nbd", "id": "e", "name": "dst", "writable": True,
                                                   "node-name": "t"})
            if "error" in r:
                raise SystemExit(f"block-export-add: {r['error']['desc']}")
            target = {"driver": "nbd", "server": {"type": "inet", "host": "127.0.0.1", "port": str(port)},
                      "export": "dst"}
        near = Daemon(binary, work, "near")
        if tls:
            near.tls(work, "client")
            target["tls-creds"] = "tls0"
        near.q.cmd("blockdev-add", **{"driver": "raw", "node-name": "src", "file": disk_file(src, source_aio)})
        near.q.cmd("blockdev-add", **{"driver": "raw", "node-name": "dst", "file": target})
        t0 = time.monotonic()
        near.q.cmd("blockdev-mirror", job_id="j", device="src", target="dst", sync="full")
        near.q.wait_event("BLOCK_JOB_READY")
        elapsed = time.monotonic() - t0
        near.q.cmd("block-job-cancel", device="j")
        near.q.wait_event("BLOCK_JOB_COMPLETED")
    finally:
        for d in (near, far):
            if d:
                d.stop()
    r = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", src, dst])
    if r.returncode != 0:
        raise SystemExit(f"{binary} {case}: target differs from source")
    return size / MiB / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--source-aio", choices=["io_uring", "threads"], default="io_uring")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", help="write the per-repetition figures here")
    a = ap.parse_args()
    cases = a.cases.split(",")
    size = a.size_mib * MiB
    daemons = (("blockjobd", a.ours), ("qsd", "qemu-storage-daemon"))
    res = {(d, c): [] for d, _ in daemons for c in cases}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        src = os.path.join(work, "src.img")
        make_source(src, size)
        subprocess.run(["sh", GENCERTS, os.path.join(work, "pki")], check=True)
        for rep in range(a.runs):
            for case in cases:
                for name, binary in daemons:
                    v = mirror_once(binary, work, src, size, case, a.source_aio)
                    res[name, case].append(v)
                    print(f"rep {rep + 1}: {name:10} {case:9} {v:7.0f} MiB/s", flush=True)

    def ratio(a_key, b_key):
        return statistics.median(x / y for x, y in zip(res[a_key], res[b_key]))

    print(f"\n{size // MiB} MiB, {a.runs} repetitions, medians (MiB/s):")
    for case in cases:
        print(f"  {case:9} blockjobd {statistics.median(res['blockjobd', case]):7.0f}"
              f"   qsd {statistics.median(res['qsd', case]):7.0f}"
              f"   blockjobd/qsd {ratio(('blockjobd', case), ('qsd', case)):.2f}")
    if "local" in cases:
        for case in cases:
            if case != "local":
                print(f"  blockjobd {case} / blockjobd local: {ratio(('blockjobd', case), ('blockjobd', 'local')):.2f}"
                      f"   (qsd: {ratio(('qsd', case), ('qsd', 'local')):.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"size_mib": a.size_mib, "results": {f"{d} {c}": v for (d, c), v in res.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
