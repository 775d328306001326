#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The write path's cost of the --state-dir write-intent log (docs/job-state.md).

A raw source (default 1 GiB) is mirrored to a raw target; once the job is READY, fio writes
4 KiB at random through the source's NBD export at queue depth 32. Configurations, interleaved
per repetition: blockjobd without --state-dir, blockjobd with --state-dir (every write to the
source goes through the write-intent log), and qemu-storage-daemon with the same mirror. Two
areas: the whole image (after every checkpoint, every 2 s, idle regions are cleared and must be
marked again) and the first 64 MiB (regions stay marked: the fast path).

Prints IOPS medians and the ratios with/without and with/qsd.
Usage: wil_bench.py --daemon build/daemon/blockjobd [--size-mib 1024] [--reps 3] [--runtime 8]"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "state"))
from mirror_restart import QMP, job, wait_for  # noqa: E402

MiB = 1 << 20


def start(binary, d, state):
    sock = os.path.join(d, "qmp.sock")
    nbd = os.path.join(d, "nbd.sock")
    for p in (sock, nbd):
        if os.path.exists(p):
            os.unlink(p)
    args = [binary]
    if state:
        args += ["--state-dir", state]
    args += ["--chardev", f"socket,id=m,path={sock},server=on,wait=off", "--monitor", "chardev=m",
             "--nbd-server", f"addr.type=unix,addr.path={nbd}"]
    p = subprocess.Popen(args, stdout=open(os.path.join(d, "daemon.log"), "a"), stderr=subprocess.STDOUT)
    return p, QMP(sock), nbd


def one(binary, d, src, tgt, state, area_mib, runtime):
    if state:
        shutil.rmtree(state, ignore_errors=True)
    p, q, nbd = start(binary, d, state)
    try:
        q.ok("blockdev-add", driver="raw", **{"node-name": "src"}, file={"driver": "file", "filename": src})
        q.ok("blockdev-add", driver="raw", **{"node-name": "tgt"}, file={"driver": "file", "filename": tgt})
        q.ok("block-export-add", type="nbd", id="e0", **{"node-name": "src"}, writable=True)
        q.ok("blockdev-mirror", **{"job-id": "job0"}, device="src", target="tgt", sync="full")
        wait_for("READY", lambda: job(q)["status"] == "ready", 300)
        r = subprocess.run(["fio", "--name=w", "--ioengine=nbd", f"--uri=nbd+unix:///src?socket={nbd}",
                            "--rw=randwrite", "--bs=4k", "--iodepth=32", "--time_based", f"--runtime={runtime}",
                            f"--size={area_mib}M", "--randrepeat=0", "--norandommap", "--output-format=json"],
                           capture_output=True, text=True, check=True)
        iops = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]["write"]["iops"]
        q.ok("job-cancel", id="job0")
        wait_for("the job to go", lambda: job(q) is None, 60)
        q.cmd("quit")
        p.wait(timeout=60)
        return iops
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--qsd", default=shutil.which("qemu-storage-daemon"))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=8)
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bjd-wil-bench-", dir=a.dir)
    try:
        src = os.path.join(d, "src.raw")
        tgt = os.path.join(d, "tgt.raw")
        subprocess.run(["dd", "if=/dev/urandom", f"of={src}", "bs=1M", f"count={a.size_mib}", "status=none"],
                       check=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", tgt, f"{a.size_mib}M"], check=True)
        configs = [("ours", a.daemon, None), ("ours --state-dir", a.daemon, os.path.join(d, "state"))]
        if a.qsd:
            configs.append(("qsd", a.qsd, None))
        for area in (a.size_mib, 64):
            res = {c[0]: [] for c in configs}
            for rep in range(a.reps):
                order = configs[rep % len(configs):] + configs[:rep % len(configs)]
                for name, binary, state in order:
                    res[name].append(one(binary, d, src, tgt, state, area, a.runtime))
            print(f"4k randwrite qd32 over {area} MiB of a {a.size_mib} MiB source, mirror READY, "
                  f"{a.reps} reps x {a.runtime} s (IOPS median, min-max):")
            for name, v in res.items():
                print(f"  {name:18s} {statistics.median(v):9.0f} ({min(v):.0f}-{max(v):.0f})")
            w, wo = res["ours --state-dir"], res["ours"]
            ratios = sorted(x / y for x, y in zip(w, wo))
            print(f"  with/without --state-dir (per rep): {statistics.median(ratios):.2f} "
                  f"({ratios[0]:.2f}-{ratios[-1]:.2f})")
            if "qsd" in res:
                rq = sorted(x / y for x, y in zip(w, res["qsd"]))
                print(f"  with --state-dir / qsd (per rep):   {statistics.median(rq):.2f} ({rq[0]:.2f}-{rq[-1]:.2f})")
        log = open(os.path.join(d, "daemon.log")).read().splitlines()
        print("journal lines:", *[line for line in log if "journal stopped" in line][-2:], sep="\n  ")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
