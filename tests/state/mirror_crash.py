#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""--state-dir after kill -9: a mirror job resumes from its last checkpoint plus its write-intent
log (docs/job-state.md, "After a crash").

A 128 MiB raw source whose every 4 KiB page holds a known byte pattern is mirrored to a raw
target. Twenty rounds, each ending with kill -9 of the daemon: the source is exported over NBD
and written with known patterns (qemu-io), synchronously and by a writer still running when
the daemon dies. After each kill the source must hold exactly what the model says (for pages
the dying writer had in flight: the old or the new pattern). Each restart must bring the job
back paused with a restore note that either resumes ("after a crash: N bytes left") or says why
it fell back to a full copy (and the log says so too). Even rounds let the job reach READY
before the writes and the kill: the next start must have well below half the image left, and
copy no more than it said. At the end the job completes and the target equals the source.

`--qcow2 ROUNDS` runs a shorter variant with a qcow2 source of 64 MiB (the last 16 MiB
unallocated, so that writes there allocate clusters; the writes that must survive are followed
by a flush, as a guest's would be): after each kill `qemu-img check` must find no corruption
(leaked clusters are allowed), and the model is checked against the image's content as
`qemu-img convert` reads it.

Usage: mirror_crash.py BLOCKJOBD [--qcow2 ROUNDS]   (exit 77 without qemu-img/qemu-io)"""
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mirror_restart import Daemon, check, job, parked, state_test_main, wait_for  # noqa: E402

MiB = 1 << 20
SIZE = 128 * MiB
PAGE = 4096
BLOCK = 64 * 1024
ROUNDS = 20
FMT = "raw"
HOLE = 16 * MiB   # qcow2: the unallocated tail


class Model:
    """The pattern byte of every 4 KiB page of the source (0: zeroes)."""

    def __init__(self, path):
        self.path = path
        self.pages = bytearray(((i * 7) % 251) + 1 for i in range(SIZE // PAGE))
        raw = path if FMT == "raw" else path + ".init"
        if FMT == "qcow2":
            for p in range((SIZE - HOLE) // PAGE, SIZE // PAGE):
                self.pages[p] = 0
        with open(raw, "wb") as f:
            f.write(self.expected())
        if FMT == "qcow2":
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path], check=True)
            os.unlink(raw)

    def read(self):
        if FMT == "raw":
            with open(self.path, "rb") as f:
                return f.read(), None
        r = subprocess.run(["qemu-img", "check", "-f", "qcow2", self.path], capture_output=True, text=True)
        if r.returncode not in (0, 3):   # 3: leaked clusters only, harmless after a crash
            return None, f"qemu-img check: status {r.returncode}: {r.stdout.strip()} {r.stderr.strip()}"
        tmp = self.path + ".raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", self.path, tmp], check=True)
        with open(tmp, "rb") as f:
            data = f.read()
        os.unlink(tmp)
        return data, None

    def expected(self):
        return b"".join(bytes([p]) * PAGE for p in self.pages)

    def write(self, off, length, pattern):
        for p in range(off // PAGE, (off + length) // PAGE):
            self.pages[p] = pattern

    def verify(self, maybe):
        """The file equals the model; pages in `maybe` (page -> patterns a dying writer sent)
        may hold one of those instead."""
        data, err = self.read()
        if err:
            return err
        if len(data) != SIZE:
            return f"size {len(data)}"
        for page, news in maybe.items():
            got = data[page * PAGE:(page + 1) * PAGE]
            if got != bytes([self.pages[page]]) * PAGE:
                match = [n for n in news if got == bytes([n]) * PAGE]
                if not match:
                    return f"page {page} holds neither the old pattern nor one written to it"
                self.pages[page] = match[0]
        if data != self.expected():
            bad = next(i for i in range(SIZE // PAGE)
                       if data[i * PAGE:(i + 1) * PAGE] != bytes([self.pages[i]]) * PAGE)
            return f"page {bad} (offset {bad * PAGE}) differs from what was written"
        return None


def qemu_io_cmds(writes):
    out = []
    for off, length, pat in writes:
        out += ["-c", f"write -P 0x{pat:02x} {off} {length}"]
    return out


def add_nodes(q, src, tgt):
    q.ok("blockdev-add", driver=FMT, **{"node-name": "src"}, file={"driver": "file", "filename": src})
    q.ok("blockdev-add", driver="raw", **{"node-name": "tgt"}, file={"driver": "file", "filename": tgt})


def kill9(dm, image):
    """SIGKILL, then wait until the image's locks are free. The kernel tears a killed
    process's io_uring down in the background, and requests still in flight hold their files
    (and so QEMU-style OFD locks) open for a moment after the process is reaped."""
    dm.p.kill()
    dm.p.wait(timeout=30)
    dm.log.close()
    deadline = time.monotonic() + 10
    while subprocess.run(["qemu-img", "info", "-f", FMT, image], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL).returncode != 0:
        check(time.monotonic() < deadline, "the killed daemon's locks were released within 10 s")
        time.sleep(0.05)


def run(binary, d):
    rng = random.Random(16)
    state = os.path.join(d, "state")
    src = os.path.join(d, "src." + FMT)
    tgt = os.path.join(d, "tgt.raw")
    model = Model(src)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", tgt, str(SIZE)], check=True)
    log_path = os.path.join(d, "daemon.log")
    pattern = 0
    resumed = fell_back = 0

    def next_pattern():
        nonlocal pattern
        pattern = pattern % 250 + 1
        return pattern

    def nbd_write(dm, writes):
        uri = f"nbd+unix:///src?socket={dm.nbd}"
        flush = ["-c", "flush"] if FMT == "qcow2" else []   # allocations are durable after a flush
        subprocess.run(["qemu-io", "-f", "raw", *qemu_io_cmds(writes), *flush, uri], check=True,
                       stdout=subprocess.DEVNULL)
        for off, length, pat in writes:
            model.write(off, length, pat)

    def crash_with_writer(dm, area_off, area_len):
        """A writer busy in [area_off, area_off + area_len) when the daemon is killed."""
        writes = []
        for _ in range(400):
            off = area_off + rng.randrange(area_len // BLOCK) * BLOCK
            writes.append((off, BLOCK, next_pattern()))
        uri = f"nbd+unix:///src?socket={dm.nbd}"
        w = subprocess.Popen(["qemu-io", "-f", "raw", *qemu_io_cmds(writes), uri], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(0.15)
        kill9(dm, src)
        w.wait(timeout=30)
        maybe = {}
        for off, length, pat in writes:   # any of them may have been the last to happen
            for p in range(off // PAGE, (off + length) // PAGE):
                maybe.setdefault(p, set()).add(pat)
        return maybe

    def scattered(n):
        return [(rng.randrange(SIZE // BLOCK) * BLOCK, BLOCK, next_pattern()) for _ in range(n)]

    # ---- round 0: a fresh mirror, killed mid-way -----------------------------------------
    dm = Daemon(binary, d, state)
    q = dm.q
    add_nodes(q, src, tgt)
    q.ok("block-export-add", type="nbd", id="e0", **{"node-name": "src"}, writable=True)
    q.ok("blockdev-mirror", **{"job-id": "job0"}, device="src", target="tgt", sync="full", speed=32 * MiB)
    wait_for("a checkpoint", lambda: os.path.exists(os.path.join(state, "job0.ckpt")), 30)
    check(os.path.exists(os.path.join(state, "job0.wil")), "the write-intent log exists while the job runs")
    wait_for("a third of the copy", lambda: job(q)["current-progress"] > SIZE // 3)
    nbd_write(dm, scattered(8))
    maybe = crash_with_writer(dm, 0, 8 * MiB)
    err = model.verify(maybe)
    check(err is None, f"round 0: after kill -9 the source holds what was written ({err or 'all pages'})")

    after_ready = False
    for rnd in range(1, ROUNDS + 1):
        dm = Daemon(binary, d, state)
        q = dm.q
        j = parked(q)
        note = j.get("restore-note", "")
        check(j["status"] == "paused", f"round {rnd}: the job is back, paused")
        if note.startswith("after a crash: "):
            resumed += 1
            left = int(note.split()[3])
            print(f"figure: round {rnd}: {left // MiB} MiB left to copy of {SIZE // MiB} MiB "
                  f"({'READY' if after_ready else 'mid-copy'} at the kill)")
            if after_ready:
                check(left < SIZE // 2, f"round {rnd}: killed after READY, well below the full size is left: {note!r}")
        else:
            check(note.startswith("full copy: "), f"round {rnd}: the job says how it came back: {note!r}")
            check("restarts as a full copy" in open(log_path).read(), f"round {rnd}: and the log says why")
            fell_back += 1
            left = SIZE
        restored = j["current-progress"]
        if rnd == ROUNDS:
            break
        q.ok("block-export-add", type="nbd", id="e0", **{"node-name": "src"}, writable=True)
        if rnd % 2 == 0:
            # To READY, then writes in a small area and one scattered, then the kill.
            q.ok("block-job-set-speed", device="job0", speed=0)
            q.ok("job-resume", id="job0")
            wait_for("READY", lambda: job(q)["status"] == "ready")
            copied = job(q)["current-progress"] - restored
            check(copied <= left, f"round {rnd}: {copied // MiB} MiB copied to READY, no more than the note said")
            area = rng.randrange((SIZE - 8 * MiB) // MiB) * MiB
            nbd_write(dm, [(area + rng.randrange(8 * MiB // BLOCK) * BLOCK, BLOCK, next_pattern()) for _ in range(6)])
            maybe = crash_with_writer(dm, area, 8 * MiB)
            after_ready = True
        else:
            # Mid-copy: writes all over the image while the job copies, throttled.
            q.ok("block-job-set-speed", device="job0", speed=48 * MiB)
            q.ok("job-resume", id="job0")
            nbd_write(dm, scattered(12))
            time.sleep(0.2)
            maybe = crash_with_writer(dm, rng.randrange(SIZE // MiB - 16) * MiB, 16 * MiB)
            after_ready = False
        err = model.verify(maybe)
        check(err is None, f"round {rnd}: after kill -9 the source holds what was written ({err or 'all pages'})")

    # ---- the end: to READY, complete, target equals source -------------------------------
    q.ok("block-job-set-speed", device="job0", speed=0)
    q.ok("job-resume", id="job0")
    wait_for("READY", lambda: job(q)["status"] == "ready")
    q.ok("job-complete", id="job0")
    wait_for("the job to go", lambda: job(q) is None)
    # (a checkpoint being written when the job ended leaves its temporary file a moment longer)
    wait_for("the state directory to empty", lambda: not os.listdir(state), 10)
    q.cmd("quit")
    dm.p.wait(timeout=60)
    check(not os.listdir(state), "nothing is left in the state directory")
    err = model.verify({})
    check(err is None, f"the source holds what was written ({err or 'all pages'})")
    r = subprocess.run(["qemu-img", "compare", "-f", FMT, "-F", "raw", src, tgt], capture_output=True, text=True)
    check(r.returncode == 0, f"target equals source: {r.stdout.strip()} {r.stderr.strip()}")
    print(f"figure: {ROUNDS} kill -9 rounds: {resumed} resumed from checkpoint + write-intent log, "
          f"{fell_back} fell back to a full copy")
    check(resumed >= ROUNDS - 2, "nearly every round resumed instead of copying everything")


def main():
    global FMT, ROUNDS, SIZE
    if sys.argv[2:3] == ["--qcow2"]:
        FMT, ROUNDS, SIZE = "qcow2", int(sys.argv[3]), 64 * MiB
    return state_test_main("bjd-crash-", run)


if __name__ == "__main__":
    sys.exit(main())
