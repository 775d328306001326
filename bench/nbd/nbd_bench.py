#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""NBD export benchmark: qemu-storage-daemon vs blockjobd on the same file, plus the ceiling.

Each daemon exports the same raw image (cache.direct=on, aio=io_uring unless --no-direct)
writable over a unix socket; fio's nbd engine runs the same jobs against each export, and
fio's io_uring engine runs them on the file directly, with registered buffers (the ceiling;
without `fixedbufs` a 1 MiB read ran 20-27% slower here). Contenders are
interleaved and their order rotates between repetitions, so drift hits all of them alike.

jobs: randread 4k qd1, randread 4k qd32, randwrite 4k qd1, randwrite 4k qd32,
      read 1M qd8, write 1M qd8 (--seconds each, default 3)

usage: nbd_bench.py --ours PATH [--qsd PATH] [--seconds N] [--reps N] [--size MiB]
                    [--scratch DIR] [--no-direct] [--json FILE] [--only FILTER]

Prints one table per job: IOPS, MiB/s, p50/p99 completion latency (us; median over the
repetitions), the ratios ours/qsd and each/ceiling (IOPS), and each daemon's CPU time per
request (us, user + system of all its threads; on a machine with idle cores, a daemon that
spins or burns CPU keeps its core awake, which can show as IOPS). Standard library only.
"""
import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qmp import QMP  # noqa: E402  (bench/qmp.py, the benchmarks' one QMP client)
from suite import cpu_seconds  # noqa: E402  (bench/suite.py)

MiB = 1 << 20
JOBS = [("randread", "4k", 1), ("randread", "4k", 32), ("randwrite", "4k", 1), ("randwrite", "4k", 32),
        ("read", "1M", 8), ("write", "1M", 8)]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Daemon:
    """qsd or blockjobd with a QMP monitor, exporting `image` writable as NBD export 'disk'."""

    def __init__(self, name, binary, workdir, image, direct):
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        qmp_sock = os.path.join(self.dir, "qmp.sock")
        self.nbd_sock = os.path.join(self.dir, "nbd.sock")
        cmd = shlex.split(binary) + ["--chardev", f"socket,id=m0,path={qmp_sock},server=on,wait=off",
                                     "--monitor", "chardev=m0"]
        self.err = open(os.path.join(self.dir, "stderr.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.err)
        try:
            self.qmp = QMP(qmp_sock)
            self.qmp.cmd("blockdev-add", driver="raw", **{"node-name": "disk"},
                         file={"driver": "file", "filename": image, "aio": "io_uring",
                               "cache": {"direct": direct}})
            self.qmp.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": self.nbd_sock}})
            self.qmp.cmd("block-export-add", type="nbd", id="e0", **{"node-name": "disk"}, writable=True)
        except Exception:
            self.close()
            raise
        self.uri = f"nbd+unix:///disk?socket={self.nbd_sock}"

    def rss_mib(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def close(self):
        try:
            self.qmp.cmd("quit")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def fio(target_args, rw, bs, qd, seconds, size_mib):
    cmd = ["fio", "--name=j", "--output-format=json", f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}",
           f"--runtime={seconds}", "--time_based", f"--size={size_mib}m", "--randrepeat=0", "--norandommap",
           *target_args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("fio failed: " + r.stderr[-400:])
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    pct = side["clat_ns"].get("percentile", {})
    return {"iops": side["iops"], "mibs": side["bw_bytes"] / MiB,
            "p50_us": pct.get("50.000000", 0) / 1000, "p99_us": pct.get("99.000000", 0) / 1000}


def make_image(path, size_mib):
    """A fully written image, so reads hit real data and not holes."""
    with open(path, "wb") as f:
        chunk = os.urandom(MiB)
        for _ in range(size_mib):
            f.write(chunk)
    os.sync()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", required=True, help="blockjobd binary (may include arguments)")
    ap.add_argument("--qsd", default="qemu-storage-daemon")
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--size", type=int, default=512, help="image size in MiB (default 512)")
    ap.add_argument("--scratch", default=None, help="directory for the image (default: /var/tmp)")
    ap.add_argument("--no-direct", action="store_true", help="cache.direct=off (page cache) for the exports")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--only", help="comma-separated job filter, e.g. '1M' or 'randread 4k qd32'")
    a = ap.parse_args()
    if a.only:
        wanted = [w.strip() for w in a.only.split(",")]
        JOBS[:] = [j for j in JOBS if any(w in f"{j[0]} {j[1]} qd{j[2]}" for w in wanted)]
    for tool in ("fio", shlex.split(a.qsd)[0], shlex.split(a.ours)[0]):
        if not shutil.which(tool) and not os.access(tool, os.X_OK):
            sys.exit(f"nbd_bench: {tool} not found")

    work = tempfile.mkdtemp(prefix="nbd-bench-", dir=a.scratch or "/var/tmp")
    image = os.path.join(work, "image.raw")
    direct = not a.no_direct
    results = {}   # (who, job) -> [result per rep]
    try:
        log(f"writing a {a.size} MiB image in {work}")
        make_image(image, a.size)
        contenders = ["ceiling", "qsd", "ours"]
        rss = {}
        for rep in range(a.reps):
            k = rep % len(contenders)
            for who in contenders[k:] + contenders[:k]:
                log(f"rep {rep + 1}/{a.reps}: {who}")
                if who == "ceiling":
                    args = ["--ioengine=io_uring", "--fixedbufs=1", f"--direct={int(direct)}", f"--filename={image}"]
                    for rw, bs, qd in JOBS:
                        results.setdefault((who, (rw, bs, qd)), []).append(fio(args, rw, bs, qd, a.seconds, a.size))
                    continue
                d = Daemon(who, a.qsd if who == "qsd" else a.ours, work, image, direct)
                try:
                    for rw, bs, qd in JOBS:
                        c0 = cpu_seconds(d.proc.pid)
                        r = fio(["--ioengine=nbd", f"--uri={d.uri}"], rw, bs, qd, a.seconds, a.size)
                        ios = r["iops"] * a.seconds
                        r["cpu_us_io"] = (cpu_seconds(d.proc.pid) - c0) * 1e6 / ios if ios else float("nan")
                        results.setdefault((who, (rw, bs, qd)), []).append(r)
                    rss[who] = max(rss.get(who, 0.0), d.rss_mib())
                finally:
                    d.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(who, job, key):
        vals = [r[key] for r in results.get((who, job), [])]
        return statistics.median(vals) if vals else float("nan")

    print(f"NBD export benchmark: {a.size} MiB raw image, cache.direct={'on' if direct else 'off'}, "
          f"{a.seconds} s per job, {a.reps} rep(s), median shown")
    print(f"{'job':<20} {'who':<8} {'IOPS':>10} {'MiB/s':>9} {'p50 us':>9} {'p99 us':>9} {'vs ceiling':>10} "
          f"{'ours/qsd':>9} {'CPU us/IO':>9}")
    for job in JOBS:
        name = f"{job[0]} {job[1]} qd{job[2]}"
        for who in ("ceiling", "qsd", "ours"):
            iops = med(who, job, "iops")
            vs_ceiling = iops / med("ceiling", job, "iops")
            ratio = f"{iops / med('qsd', job, 'iops'):9.2f}" if who == "ours" else ""
            cpu = f"{med(who, job, 'cpu_us_io'):9.1f}" if who != "ceiling" else ""
            print(f"{name:<20} {who:<8} {iops:10.0f} {med(who, job, 'mibs'):9.1f} {med(who, job, 'p50_us'):9.1f} "
                  f"{med(who, job, 'p99_us'):9.1f} {vs_ceiling:10.2f} {ratio:>9} {cpu:>9}")
    if rss:
        print("peak RSS (MiB): " + ", ".join(f"{w} {v:.1f}" for w, v in sorted(rss.items())))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"size_mib": a.size, "seconds": a.seconds, "direct": direct,
                       "results": [{"who": w, "job": list(j), "reps": v} for (w, j), v in results.items()],
                       "peak_rss_mib": rss}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
