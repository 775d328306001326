#!/usr/bin/env python3
"""blockdev-mirror into an nbd node, against the same mirror into a local file.

usage: nbd_client_bench.py OURS_BINARY [--size-mib N] [--runs N] [--source-aio io_uring|threads] [--tls]

Creates a fully allocated raw source image of random data. For each daemon (blockjobd and
qemu-storage-daemon) it times blockdev-mirror sync=full up to BLOCK_JOB_READY twice: into a
raw node over a local file (the ceiling), and into a raw node over an nbd node connected to
qemu-nbd on a UNIX socket (loopback), serving an empty raw file. Prints MiB/s per case (best
of --runs) and the ratios.

The source is in the page cache (just written). io_uring copies cached pages inside
io_uring_enter on the loop's thread unless told otherwise; blockjobd marks reads and writes
of 256 KiB or more on files without O_DIRECT for io_uring's workers (IOSQE_ASYNC, see
io::io_hint in lib/io), so the loop only moves payloads to and from the socket.
`--source-aio threads` (QEMU's default) compares with the thread pool doing the copies.

`--tls`: the far side is qemu-storage-daemon exporting the empty file over NBD with
tls-creds-x509 (certificates from tests/qmp/tls/gencerts.sh), and the nbd node connects with
tls-creds (a client endpoint's x509 object added by object-add): the issue-13 migration path.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from qmp import QMP  # noqa: E402

MiB = 1 << 20


def make_source(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


GENCERTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "qmp", "tls", "gencerts.sh")


def far_server(work, dst, nbd_sock, tls):
    if not tls:
        return subprocess.Popen(["qemu-nbd", "-t", "-e", "4", "-f", "raw", "-k", nbd_sock, "-x", "dst", dst],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pki = os.path.join(work, "pki")
    return subprocess.Popen(["qemu-storage-daemon",
                             "--object", f"tls-creds-x509,id=t,dir={pki}/server,endpoint=server",
                             "--blockdev", f"driver=file,node-name=f,filename={dst}",
                             "--nbd-server", f"addr.type=unix,addr.path={nbd_sock},tls-creds=t",
                             "--export", "type=nbd,id=e,node-name=f,name=dst,writable=on"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def mirror_once(daemon, work, src, size, into_nbd, source_aio="io_uring", tls=False):
    dst = os.path.join(work, "dst.img")
    with open(dst, "wb") as f:
        f.truncate(size)
    sock = os.path.join(work, "qmp.sock")
    nbd_sock = os.path.join(work, "far.sock")
    for p in (sock, nbd_sock):
        if os.path.exists(p):
            os.unlink(p)
    far = None
    if into_nbd:
        far = far_server(work, dst, nbd_sock, tls)
        while not os.path.exists(nbd_sock):
            time.sleep(0.01)
    proc = subprocess.Popen([daemon, "--chardev", f"socket,id=c,path={sock},server=on,wait=off", "--monitor", "c"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        q = QMP(sock)
        q.cmd("blockdev-add", **{"driver": "raw", "node-name": "src",
                                 "file": {"driver": "file", "filename": src, "aio": source_aio}})
        if into_nbd:
            target = {"driver": "nbd", "server": {"type": "unix", "path": nbd_sock}, "export": "dst"}
            if tls:
                q.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "cx",
                                       "dir": os.path.join(work, "pki", "client"), "endpoint": "client"})
                target.update({"tls-creds": "cx", "tls-hostname": "localhost"})
        else:
            target = {"driver": "file", "filename": dst}
        q.cmd("blockdev-add", **{"driver": "raw", "node-name": "dst", "file": target})
        t0 = time.monotonic()
        q.cmd("blockdev-mirror", job_id="j", device="src", target="dst", sync="full")
        q.wait_event("BLOCK_JOB_READY")
        elapsed = time.monotonic() - t0
        q.cmd("block-job-cancel", device="j")
        q.wait_event("BLOCK_JOB_COMPLETED")
        q.execute("quit")
        q.close()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if far:
            far.terminate()
            far.wait()
    r = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", src, dst])
    if r.returncode != 0:
        raise SystemExit(f"{daemon}: target differs from source")
    return size / MiB / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--source-aio", choices=["io_uring", "threads"], default="io_uring")
    ap.add_argument("--tls", action="store_true", help="the far side is qemu-storage-daemon with tls-creds-x509")
    a = ap.parse_args()
    size = a.size_mib * MiB
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        src = os.path.join(work, "src.img")
        make_source(src, size)
        if a.tls:
            subprocess.run(["sh", GENCERTS, os.path.join(work, "pki")], check=True)
        res = {}
        for name, daemon in (("blockjobd", a.ours), ("qsd", "qemu-storage-daemon")):
            for case, nbd in (("file", False), ("nbd", True)):
                res[name, case] = max(mirror_once(daemon, work, src, size, nbd, a.source_aio, a.tls and nbd) for _ in range(a.runs))
                label = "nbd+tls" if nbd and a.tls else case
                print(f"{name:10} mirror into {label:7}: {res[name, case]:8.0f} MiB/s", flush=True)
        print(f"blockjobd nbd / blockjobd file: {res['blockjobd', 'nbd'] / res['blockjobd', 'file']:.2f}")
        print(f"blockjobd nbd / qsd nbd:        {res['blockjobd', 'nbd'] / res['qsd', 'nbd']:.2f}")


if __name__ == "__main__":
    main()
