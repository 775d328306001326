#!/usr/bin/env python3
"""Mirror between a local file and a Ceph RBD image: blockjobd beside qemu-storage-daemon
and Ceph's own tools, in one run.

usage: rbd_bench.py --daemon ours:PATH [--ceph-conf CONF] [--size-mib N] [--reps N]
                    [--cases to-rbd,from-rbd] [--scratch DIR] [--json FILE]
                    [--image-features LIST] [--no-rbd-cache] [--buf-size-mib N]
                    [--local-in-memory]

cases:
  to-rbd    file -> RBD: a raw file of random data (file node cache.direct=on, aio=io_uring)
            mirrored (blockdev-mirror sync=full, default granularity and buf-size) into a
            freshly created RBD image of the same size (rbd node, defaults: rbd_cache on);
            seconds from blockdev-mirror to BLOCK_JOB_READY as MiB/s. Ceilings: `rbd import`
            of the same file into a new image, and `rbd bench --io-type write` (4 MiB, 16
            threads, sequential) on a new image.
  from-rbd  RBD -> file: an RBD image holding the same random data (imported once) mirrored
            into a sparse raw file (cache.direct=on, aio=io_uring). Ceilings: `rbd export`
            of the image into a file (then sync), and `rbd bench --io-type read` (4 MiB, 16
            threads, sequential) on it.

Each repetition runs every contender once, the order rotating; reported: min/median/max
MiB/s per series and the per-repetition ratios (ours/qsd, each daemon/ceiling), their
median and range. After each daemon's first run the target is checked with qemu-img compare
(through librbd for RBD); a wrong copy is reported as a WRONG TARGET series. The daemon's
process CPU time (user+sys, /proc/PID/stat) over the copy is reported too.

Without --ceph-conf a one-node cluster is started with tests/ceph/cluster.sh (bluestore on a
sparse file) in the scratch dir and stopped at the end. Images live in pool rbd, namespace
`bench-PID`, removed at the end.
"""
import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import suite  # noqa: E402
from suite import MONITOR, cpu_seconds, drop_caches  # noqa: E402

MiB = 1 << 20


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Ceph:
    def __init__(self, conf, ns, features="", cache=True):
        self.conf, self.ns, self.cache = conf, ns, cache
        self.env = dict(os.environ, CEPH_CONF=conf)
        # Options for every image this run creates (create, import) and every rbd command.
        self.create_opts = [a for f in features.split(",") if f for a in ("--image-feature", f)]
        self.opts = [] if cache else ["--rbd_cache=false"]

    def cmd(self, *args):
        """An rbd command line with this run's conf and cache setting."""
        return ["rbd", "-c", self.conf, *self.opts, *args]

    def spec(self, image):
        return f"rbd/{self.ns}/{image}"

    def uri(self, image):   # QEMU's filename syntax
        return f"rbd:rbd/{self.ns}/{image}:conf={self.conf}"

    def rbd(self, *args, check=True):
        return subprocess.run(self.cmd(*args), check=check, env=self.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def create(self, image, size):
        self.remove(image)
        self.rbd("create", *self.create_opts, "--size", f"{size // MiB}M", self.spec(image))

    def import_cmd(self, path, image):
        return self.cmd("import", "--no-progress", *self.create_opts, path, self.spec(image))

    def remove(self, image):
        self.rbd("rm", "--no-progress", self.spec(image), check=False)

    def node(self, image):
        n = {"driver": "rbd", "pool": "rbd", "namespace": self.ns, "image": image, "conf": self.conf}
        if not self.cache:
            n["cache"] = {"direct": True}   # rbd_cache off, in both daemons
        return n


class Daemon(suite.Daemon):
    """suite.py's daemon (process, QMP client, stderr log), with a raw node over any file node."""

    def add(self, name, file_node):
        r = self.q.execute("blockdev-add", {"driver": "raw", "node-name": name, "file": file_node})
        if "error" in r:
            raise RuntimeError(f"{self.name} blockdev-add {name}: {r['error']}")


def local_file(path):
    # tmpfs (--local-in-memory) has no O_DIRECT
    direct = not path.startswith("/dev/shm/")
    return {"driver": "file", "filename": path, "aio": "io_uring", "cache": {"direct": direct}}


def mirror(d, size, buf_size=0):
    """blockdev-mirror src -> dst to READY, then complete: (MiB/s to READY, CPU seconds)."""
    args = {"job-id": "m", "device": "src", "target": "dst", "sync": "full"}
    if buf_size:
        args["buf-size"] = buf_size
    c0 = cpu_seconds(d.proc.pid)
    t0 = time.monotonic()
    r = d.q.execute("blockdev-mirror", args)
    if "error" in r:
        raise RuntimeError(f"{d.name} blockdev-mirror: {r['error']}")
    d.q.wait_event("BLOCK_JOB_READY", timeout=1800)
    secs = time.monotonic() - t0
    cpu = cpu_seconds(d.proc.pid) - c0
    d.q.cmd("block-job-complete", device="m")
    d.q.wait_event("BLOCK_JOB_COMPLETED", timeout=300)
    return size / MiB / secs, cpu


def timed(cmd, env=None):
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode:
        raise RuntimeError(f"{cmd[0]} failed: {r.stderr.decode(errors='replace')[-400:]}")
    return time.monotonic() - t0


def compare(a_fmt, a, b_fmt, b):
    return subprocess.run(["qemu-img", "compare", "-f", a_fmt, "-F", b_fmt, a, b],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def rbd_bench(ceph, image, io_type, size):
    """rbd bench's own figure (bytes/sec of its summary line) as MiB/s."""
    r = subprocess.run(ceph.cmd("bench", "--io-type", io_type, "--io-size", "4M",
                        "--io-threads", "16", "--io-total", str(size), "--io-pattern", "seq",
                        ceph.spec(image)), env=ceph.env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError("rbd bench failed: " + r.stderr[-400:])
    # "elapsed: 5   ops: 256   ops/sec: 49.6   bytes/sec: 198 MiB/s"
    last = [ln for ln in r.stdout.splitlines() if "bytes/sec:" in ln][-1]
    val, unit = last.split("bytes/sec:")[1].split()[:2]
    scale = {"B/s": 1 / MiB, "KiB/s": 1 / 1024, "MiB/s": 1, "GiB/s": 1024}[unit]
    return float(val) * scale


def case_to_rbd(ctx):
    size, ceph, src = ctx.size, ctx.ceph, ctx.src
    out, checked = {}, set()

    def run_import():
        ceph.remove("imp")
        drop_caches()
        t = timed(ceph.import_cmd(src, "imp"), ceph.env)
        out.setdefault("rbd import MiB/s", []).append(size / MiB / t)
        ceph.remove("imp")

    def run_bench():
        ceph.create("bw", size)
        out.setdefault("rbd bench write MiB/s", []).append(rbd_bench(ceph, "bw", "write", size))
        ceph.remove("bw")

    def run_daemon(name, tpl):
        ceph.create("dst", size)
        drop_caches()
        d = Daemon(name, tpl, ctx.dir)
        try:
            d.add("src", local_file(src))
            d.add("dst", ceph.node("dst"))
            mibs, cpu = mirror(d, size, ctx.buf_size)
            out.setdefault(f"{name} MiB/s", []).append(mibs)
            out.setdefault(f"{name} CPU s", []).append(cpu)
        finally:
            d.close()
        if name not in checked:
            checked.add(name)
            if not compare("raw", src, "raw", ceph.uri("dst")):
                out.setdefault(f"{name} WRONG TARGET", []).append(1)
        ceph.remove("dst")

    ctx.rounds([("rbd import", run_import), ("rbd bench write", run_bench)] + ctx.contenders(run_daemon))
    return out, ctx.ratios(["rbd import MiB/s", "rbd bench write MiB/s"])


def case_from_rbd(ctx):
    size, ceph, src = ctx.size, ctx.ceph, ctx.src
    out, checked = {}, set()
    ceph.remove("src")
    timed(ceph.import_cmd(src, "src"), ceph.env)
    dst = os.path.join(ctx.dir, "dst.raw")

    def run_export():
        if os.path.exists(dst):
            os.unlink(dst)
        drop_caches()
        t0 = time.monotonic()
        timed(ceph.cmd("export", "--no-progress", ceph.spec("src"), dst), ceph.env)
        os.sync()
        out.setdefault("rbd export MiB/s", []).append(size / MiB / (time.monotonic() - t0))
        os.unlink(dst)

    def run_bench():
        out.setdefault("rbd bench read MiB/s", []).append(rbd_bench(ceph, "src", "read", size))

    def run_daemon(name, tpl):
        with open(dst, "wb") as f:
            f.truncate(size)
        drop_caches()
        d = Daemon(name, tpl, ctx.dir)
        try:
            d.add("src", ceph.node("src"))
            d.add("dst", local_file(dst))
            mibs, cpu = mirror(d, size, ctx.buf_size)
            out.setdefault(f"{name} MiB/s", []).append(mibs)
            out.setdefault(f"{name} CPU s", []).append(cpu)
        finally:
            d.close()
        if name not in checked:
            checked.add(name)
            if not compare("raw", src, "raw", dst):
                out.setdefault(f"{name} WRONG TARGET", []).append(1)
        os.unlink(dst)

    ctx.rounds([("rbd export", run_export), ("rbd bench read", run_bench)] + ctx.contenders(run_daemon))
    ceph.remove("src")
    return out, ctx.ratios(["rbd export MiB/s", "rbd bench read MiB/s"])


class Ctx:
    def __init__(self, args, daemons, ceph, workdir, src):
        self.size, self.reps, self.daemons, self.ceph, self.dir, self.src = \
            args.size_mib * MiB, args.reps, daemons, ceph, workdir, src
        self.buf_size = args.buf_size_mib * MiB

    def contenders(self, run_daemon):
        return [(name, (lambda n=name, t=tpl: run_daemon(n, t))) for name, tpl in self.daemons]

    def rounds(self, contenders):
        for rep in range(self.reps):
            k = rep % len(contenders)
            for name, fn in contenders[k:] + contenders[:k]:
                log(f"  rep {rep + 1}/{self.reps}: {name}")
                fn()

    def ratios(self, ceilings):
        r = []
        names = [n for n, _ in self.daemons]
        for n in names:
            if n != "qsd" and "qsd" in names:
                r.append((f"{n} / qsd", f"{n} MiB/s", "qsd MiB/s"))
                r.append((f"{n} / qsd CPU", f"{n} CPU s", "qsd CPU s"))
        for n in names:
            for c in ceilings:
                r.append((f"{n} / {c.replace(' MiB/s', '')}", f"{n} MiB/s", c))
        return r


def fmt(v):
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


def report(case, res, ratios):
    print(f"\n== {case}")
    for series, vals in res.items():
        v = sorted(vals)
        print(f"  {series:28s} median {fmt(statistics.median(v)):>7s}  (min {fmt(v[0])}, max {fmt(v[-1])}, n={len(v)})")
    out = {}
    for label, num, den in ratios:
        if num not in res or den not in res:
            continue
        per = sorted(a / b for a, b in zip(res[num], res[den]) if b)
        if not per:
            continue
        out[label] = per
        print(f"  {label:28s} median {statistics.median(per):.2f}  (per rep: {' '.join(f'{x:.2f}' for x in per)})")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--daemon", action="append", default=[], help="ours:PATH (qsd always runs)")
    ap.add_argument("--ceph-conf", default="")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cases", default="to-rbd,from-rbd")
    ap.add_argument("--scratch", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--image-features", default="",
                    help="comma list for every image the run creates, e.g. layering (default: Ceph's)")
    ap.add_argument("--buf-size-mib", type=int, default=0,
                    help="blockdev-mirror buf-size for both daemons (default: theirs, 16 MiB)")
    ap.add_argument("--local-in-memory", action="store_true",
                    help="the local file (source or target) on /dev/shm: measures the RBD side alone "
                         "when the cluster's OSD shares the local disk")
    ap.add_argument("--no-rbd-cache", action="store_true",
                    help="rbd_cache off everywhere: cache.direct=on on rbd nodes, --rbd_cache=false for rbd")
    args = ap.parse_args()

    daemons = [("qsd", "qemu-storage-daemon " + MONITOR)]
    for spec in args.daemon:
        name, _, path = spec.partition(":")
        daemons.append((name, shlex.quote(os.path.abspath(path)) + " " + MONITOR))

    scratch = args.scratch or os.path.join(os.path.dirname(HERE), ".scratch")
    os.makedirs(scratch, exist_ok=True)
    workdir = tempfile.mkdtemp(dir=scratch, prefix="rbd-bench.")
    localdir = tempfile.mkdtemp(dir="/dev/shm", prefix="rbd-bench.") if args.local_in_memory else workdir
    cluster = None
    conf = args.ceph_conf
    try:
        if not conf:
            cluster = os.path.join(workdir, "ceph")
            t0 = time.monotonic()
            r = subprocess.run([os.path.join(os.path.dirname(HERE), "tests", "ceph", "cluster.sh"), "start", cluster],
                               capture_output=True, text=True)
            if r.returncode:
                log(r.stderr)
                return 77 if r.returncode == 77 else 1
            conf = os.path.join(cluster, "ceph.conf")
            log(f"cluster up in {time.monotonic() - t0:.1f} s: {conf}")
        ceph = Ceph(conf, f"bench-{os.getpid()}", args.image_features, not args.no_rbd_cache)
        ceph.rbd("namespace", "create", f"rbd/{ceph.ns}")
        src = os.path.join(localdir, "src.raw")
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        ctx = Ctx(args, daemons, ceph, localdir, src)
        info = {"machine": f"{platform.node()} {os.cpu_count()} CPUs, kernel {platform.release()}",
                "size_mib": args.size_mib, "reps": args.reps, "cases": {}}
        print(f"# {info['machine']}; {args.size_mib} MiB, {args.reps} repetitions; ceph conf {conf}; "
              f"image features {args.image_features or 'default'}; rbd_cache {'off' if args.no_rbd_cache else 'on'}; "
              f"buf-size {args.buf_size_mib or 'default'}; local file in {os.path.dirname(src)}")
        for case in args.cases.split(","):
            log(f"case {case}")
            res, ratios = {"to-rbd": case_to_rbd, "from-rbd": case_from_rbd}[case](ctx)
            per = report(case, res, ratios)
            info["cases"][case] = {"results": res, "ratios": per}
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(info, f, indent=1)
        ceph.rbd("namespace", "remove", f"rbd/{ceph.ns}", check=False)
    finally:
        if cluster:
            subprocess.run([os.path.join(os.path.dirname(HERE), "tests", "ceph", "cluster.sh"), "stop", cluster])
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(localdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
