#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Block statistics benchmarks.

1. query-blockstats latency: N null-co nodes, `query-blockstats {query-nodes: true}` issued
   back to back over the QMP socket; reports p50/p99/mean round-trip time and reply size.
   With --qsd the same is measured on qemu-storage-daemon for comparison (its node view is
   cheaper: it reports zeros).
2. Accounting cost (--nbd): 4k random reads through an NBD export of a null-co node, with
   fio's nbd engine, with accounting on (default), on plus timed stats and histograms, and
   off (BJD_STATS_DISABLE=1, a switch that exists for this comparison only).

Standard library only. Example:
    bench/stats/stats_bench.py --daemon build/daemon/blockjobd --nodes 100 --iters 2000 --qsd --nbd
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qmp import QMP  # noqa: E402  (bench/qmp.py, the benchmarks' one QMP client)


class Daemon:
    def __init__(self, argv0, tmp, env=None):
        self.tmp = tmp
        self.sock = os.path.join(tmp, "qmp.sock")
        cmd = [argv0, "--chardev", f"socket,id=m,path={self.sock},server=on,wait=off",
               "--monitor", "chardev=m"]
        self.log = open(os.path.join(tmp, "daemon.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.qmp = QMP(self.sock, timeout=10.0)

    def stop(self):
        try:
            self.qmp.cmd("quit")
        except Exception:
            pass
        self.qmp.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def percentile(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, round(p / 100.0 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def bench_query(argv0, nodes, iters, intervals):
    tmp = tempfile.mkdtemp(prefix="stats-bench-")
    d = Daemon(argv0, tmp)
    try:
        for i in range(nodes):
            d.qmp.cmd("blockdev-add", driver="null-co", **{"node-name": f"n{i}", "size": 1 << 30})
            if intervals:
                d.qmp.cmd("x-blockdev-set-stats", **{"node-name": f"n{i}", "intervals": intervals})
        for _ in range(min(50, iters)):  # warm-up
            d.qmp.cmd("query-blockstats", **{"query-nodes": True})
        lat = []
        size = 0
        for _ in range(iters):
            t0 = time.perf_counter_ns()
            ret = d.qmp.cmd("query-blockstats", **{"query-nodes": True})
            size = d.qmp.last_size
            lat.append((time.perf_counter_ns() - t0) / 1000.0)
        assert len(ret) == nodes, f"expected {nodes} entries, got {len(ret)}"
        lat.sort()
        return {"p50_us": percentile(lat, 50), "p99_us": percentile(lat, 99),
                "mean_us": statistics.fmean(lat), "reply_bytes": size}
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def bench_nbd(argv0, mode, runtime, iodepth):
    tmp = tempfile.mkdtemp(prefix="stats-bench-")
    env = {"BJD_STATS_DISABLE": "1"} if mode == "off" else {}
    d = Daemon(argv0, tmp, env)
    try:
        d.qmp.cmd("blockdev-add", driver="null-co", **{"node-name": "n0", "size": 1 << 30})
        if mode == "on+timed":
            d.qmp.cmd("x-blockdev-set-stats", **{"node-name": "n0", "intervals": [1, 60]})
            d.qmp.cmd("block-latency-histogram-set", id="n0", boundaries=[10000, 100000, 1000000])
        nbd_sock = os.path.join(tmp, "nbd.sock")
        d.qmp.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": nbd_sock}})
        d.qmp.cmd("block-export-add", type="nbd", id="e0", **{"node-name": "n0"})
        out = subprocess.run(
            ["fio", "--name=randread", "--ioengine=nbd", f"--uri=nbd+unix:///n0?socket={nbd_sock}",
             "--rw=randread", "--bs=4k", f"--iodepth={iodepth}", f"--runtime={runtime}",
             "--time_based", "--size=1g", "--output-format=json"],
            check=True, capture_output=True, text=True).stdout
        job = json.loads(out[out.index("{"):])["jobs"][0]
        stats = d.qmp.cmd("query-blockstats", **{"query-nodes": True})
        rd_ops = stats[0]["stats"]["rd_operations"]
        return {"iops": job["read"]["iops"], "fio_reads": job["read"]["total_ios"], "rd_operations": rd_ops}
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--daemon", default="build/daemon/blockjobd")
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--intervals", default="", help="comma-separated timed-stats intervals per node (ours only)")
    ap.add_argument("--qsd", action="store_true", help="also measure qemu-storage-daemon")
    ap.add_argument("--nbd", action="store_true", help="NBD 4k randread IOPS with accounting on vs off")
    ap.add_argument("--runtime", type=int, default=10)
    ap.add_argument("--iodepth", type=int, default=32)
    a = ap.parse_args()
    intervals = [int(x) for x in a.intervals.split(",") if x]

    print(f"query-blockstats query-nodes=true, {a.nodes} null-co nodes, {a.iters} queries")
    print(f"{'daemon':<24} {'p50 us':>9} {'p99 us':>9} {'mean us':>9} {'reply B':>9}")
    rows = [("blockjobd" + (f" +intervals {a.intervals}" if intervals else ""), a.daemon, intervals)]
    if a.qsd:
        rows.append(("qemu-storage-daemon", shutil.which("qemu-storage-daemon"), []))
    for label, argv0, iv in rows:
        r = bench_query(argv0, a.nodes, a.iters, iv)
        print(f"{label:<24} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} {r['mean_us']:>9.1f} {r['reply_bytes']:>9}")

    if a.nbd:
        if not shutil.which("fio"):
            sys.exit("fio not found")
        print(f"\nNBD 4k randread, null-co, fio nbd engine, iodepth {a.iodepth}, {a.runtime} s")
        print(f"{'accounting':<12} {'IOPS':>10} {'fio reads':>11} {'rd_operations':>14}")
        for mode in ("on", "on+timed", "off"):
            r = bench_nbd(a.daemon, mode, a.runtime, a.iodepth)
            print(f"{mode:<12} {r['iops']:>10.0f} {r['fio_reads']:>11} {r['rd_operations']:>14}")


if __name__ == "__main__":
    main()
