#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""--state-dir: a mirror job survives a clean restart (docs/job-state.md).

Starts blockjobd with --state-dir, adds a qcow2 source (file node named by reference) and a
raw target, exports the source over NBD, starts a throttled 512 MiB mirror and, while it is
mid-way, writes to the source over NBD (qemu-io), then stops the daemon with SIGTERM. The
next start with the same --state-dir must show the job paused with the progress it had saved,
`job-resume` must carry it to READY copying only what was left, and after `job-complete` the
target must equal the source (qemu-img compare). Then the fallbacks: a source touched while
the daemon was down restarts as a full copy and says why; a job whose target is gone comes
back concluded with an error until job-dismiss.

Usage: mirror_restart.py BLOCKJOBD   (exit 77 without qemu-img/qemu-io)"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from bjdtest import QMP  # noqa: E402

MiB = 1 << 20
SIZE = 512 * MiB


def job(q, jid="job0"):
    for j in q.ok("query-jobs"):
        if j["id"] == jid:
            return j
    return None


def block_job(q, jid="job0"):
    for j in q.ok("query-block-jobs"):
        if j["device"] == jid:
            return j
    return None


def wait_for(what, pred, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def parked(q, jid="job0", timeout=30):
    """The job once it is no longer running (a restored job comes back paused, or concluded)."""
    return wait_for(f"{jid} to come back", lambda: (lambda x: x if x and x["status"] != "running" else None)(job(q, jid)),
                    timeout)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)
    print(f"ok: {msg}")


class Daemon:
    def __init__(self, binary, d, state, extra=()):
        self.sock = os.path.join(d, "qmp.sock")
        self.nbd = os.path.join(d, "nbd.sock")
        for p in (self.sock, self.nbd):
            if os.path.exists(p):
                os.unlink(p)
        self.log = open(os.path.join(d, "daemon.log"), "a")
        self.p = subprocess.Popen(
            [binary, "--state-dir", state, "--chardev", f"socket,id=m,path={self.sock},server=on,wait=off",
             "--monitor", "chardev=m", "--nbd-server", f"addr.type=unix,addr.path={self.nbd}", *extra],
            stdout=self.log, stderr=self.log)
        self.q = QMP(self.sock)

    def stop(self, how="SIGTERM"):
        if how == "quit":
            self.q.cmd("quit")
        else:
            self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(timeout=60)
        check(rc == 0, f"daemon exited with status 0 after {how}")


def add_nodes(q, src, tgt):
    q.ok("blockdev-add", driver="file", **{"node-name": "srcf"}, filename=src)
    q.ok("blockdev-add", driver="qcow2", **{"node-name": "src"}, file="srcf")
    q.ok("blockdev-add", driver="raw", **{"node-name": "tgt"}, file={"driver": "file", "filename": tgt})


def run(binary, d):
    state = os.path.join(d, "state")
    src = os.path.join(d, "src.qcow2")
    tgt = os.path.join(d, "tgt.raw")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", src, str(SIZE)], check=True)
    # 384 MiB of data in three areas, the rest unallocated.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 128M", "-c", "write -P 0x22 192M 128M",
                    "-c", "write -P 0x33 384M 128M", src], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", tgt, str(SIZE)], check=True)

    # ---- 1. a job mid-way, live NBD writes, SIGTERM --------------------------------------
    dm = Daemon(binary, d, state)
    q = dm.q
    add_nodes(q, src, tgt)
    q.ok("block-export-add", type="nbd", id="e0", **{"node-name": "src"}, writable=True)
    q.ok("blockdev-mirror", **{"job-id": "job0"}, device="src", target="tgt", sync="full", speed=48 * MiB)
    check(os.path.exists(os.path.join(state, "job0.job.json")), "the definition is saved while the job runs")
    saved = json.load(open(os.path.join(state, "job0.job.json")))
    check([n["node-name"] for n in saved["nodes"]] == ["srcf", "src", "tgt"],
          "the definition holds the nodes in the order they were added (referenced child first)")
    # Zero areas count too (a raw target without discard=unmap gets them written): stop at
    # about two thirds, with some 3 s of copying left.
    wait_for("two thirds of the copy", lambda: job(q)["current-progress"] > 352 * MiB)
    uri = f"nbd+unix:///src?socket={dm.nbd}"
    # Live writes: to an area already copied (must be copied again) and to one not yet.
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x44 8M 4M", "-c", "write -P 0x55 400M 4M",
                    "-c", "write -P 0x66 130M 1M", uri], check=True, stdout=subprocess.DEVNULL)
    before = block_job(q)
    check(before["status"] == "running" and before["offset"] < before["len"],
          f"mid-way at SIGTERM: offset {before['offset'] // MiB} MiB of {before['len'] // MiB} MiB")
    dm.stop("SIGTERM")
    check(os.path.exists(os.path.join(state, "job0.progress")), "the progress is saved at the stop")

    # ---- 2. the restart: paused, with the saved progress ---------------------------------
    dm = Daemon(binary, d, state)
    q = dm.q
    j = parked(q)
    check(j["status"] == "paused", f"the job is back, paused: {j}")
    check(j["current-progress"] >= before["offset"],
          f"its progress goes on from where it stopped ({j['current-progress'] // MiB} MiB)")
    note = j.get("restore-note", "")
    check(note.startswith("saved progress: "), f"query-jobs says how it came back: {note!r}")
    left = int(note.split()[2])
    check(0 < left < SIZE, f"{left // MiB} MiB left to copy according to the saved bitmap")
    bj = block_job(q)
    check(bj["paused"] and bj.get("restore-note") == note, "query-block-jobs says the same")
    check(not os.path.exists(os.path.join(state, "job0.progress")), "the progress file is consumed at the start")
    restored_offset = j["current-progress"]
    q.ok("block-job-set-speed", device="job0", speed=0)
    q.ok("job-resume", id="job0")
    wait_for("READY", lambda: job(q)["status"] == "ready")
    after = job(q)
    copied = after["current-progress"] - restored_offset
    print(f"figure: copied after the restart: {copied // MiB} MiB ({copied} bytes) of {SIZE // MiB} MiB; "
          f"before the stop: {before['offset'] // MiB} MiB")
    check(copied <= left + 16 * MiB, "only what was left (plus the live writes) is copied after the restart")
    check(copied < SIZE // 2, "well below the full size")
    q.ok("job-complete", id="job0")
    wait_for("the job to go", lambda: job(q) is None)
    check(not os.path.exists(os.path.join(state, "job0.job.json")), "the state goes when the job ends")
    dm.stop("quit")
    r = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, tgt], capture_output=True, text=True)
    check(r.returncode == 0, f"target equals source: {r.stdout.strip()} {r.stderr.strip()}")

    # ---- 3. an image changed while the daemon was down: full copy, and why ---------------
    dm = Daemon(binary, d, state)
    q = dm.q
    add_nodes(q, src, tgt)
    q.ok("blockdev-mirror", **{"job-id": "job1"}, device="src", target="tgt", sync="full", speed=32 * MiB)
    wait_for("some progress", lambda: job(q, "job1")["current-progress"] > 16 * MiB)
    dm.stop("quit")
    check(os.path.exists(os.path.join(state, "job1.progress")), "quit saves the progress too")
    os.utime(src, ns=(time.time_ns(), time.time_ns()))   # changed behind our back
    dm = Daemon(binary, d, state)
    q = dm.q
    j = parked(q, "job1")
    check(j["status"] == "paused" and j["current-progress"] == 0, "a changed source restarts from 0")
    check(j.get("restore-note", "").startswith("full copy: ") and "changed while the daemon was down" in
          j["restore-note"], f"and says why: {j.get('restore-note')!r}")
    check("full copy" in open(os.path.join(d, "daemon.log")).read(), "the log says it too")
    q.ok("job-cancel", id="job1")
    wait_for("the cancelled job to go", lambda: job(q, "job1") is None)
    # (a checkpoint being written when the job ended leaves its temporary file a moment longer)
    wait_for("the state directory to empty", lambda: not os.listdir(state), 10)
    check(not os.listdir(state), "a cancelled job leaves nothing behind")

    # ---- 4. the images are gone: concluded with an error, until job-dismiss ---------------
    add_nodes_done = q.ok("query-named-block-nodes")
    check(any(n["node-name"] == "src" for n in add_nodes_done), "the nodes re-added for job1 stay")
    q.ok("blockdev-mirror", **{"job-id": "job2"}, device="src", target="tgt", sync="full", speed=16 * MiB)
    wait_for("some progress", lambda: job(q, "job2")["current-progress"] > 0)
    dm.stop("SIGTERM")
    os.rename(tgt, tgt + ".away")
    dm = Daemon(binary, d, state)
    q = dm.q
    j = wait_for("job2 to conclude", lambda: (lambda x: x if x and x["status"] == "concluded" else None)(job(q, "job2")),
                 30)
    check(j is not None and j["status"] == "concluded" and "No such file or directory" in j.get("error", ""),
          f"a job whose target is gone is concluded with an error: {j}")
    dm.stop("SIGTERM")
    dm = Daemon(binary, d, state)
    q = dm.q
    check(job(q, "job2") is not None, "it is still there after another restart")
    q.ok("job-dismiss", id="job2")
    check(job(q, "job2") is None and not os.listdir(state), "job-dismiss removes it for good")
    dm.stop("quit")
    os.rename(tgt + ".away", tgt)


def state_test_main(prefix, body, logs=("daemon.log",)):
    """The state tests' main: exit 77 (skipped) without qemu-img and qemu-io; else
    body(BLOCKJOBD, DIR) in a fresh directory, the tail of each daemon log in `logs` (paths
    inside DIR) on stderr when it fails; 0 when it passed."""
    binary = sys.argv[1]
    if not shutil.which("qemu-img") or not shutil.which("qemu-io"):
        print("skipped: needs qemu-img and qemu-io")
        return 77
    d = tempfile.mkdtemp(prefix=prefix)
    try:
        body(binary, d)
    except Exception:
        for name in logs:
            log = os.path.join(d, name)
            if os.path.exists(log):
                sys.stderr.write(f"---- {name} (last 60 lines) ----\n")
                sys.stderr.writelines(open(log).readlines()[-60:])
        raise
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print("all passed")
    return 0


def main():
    return state_test_main("bjd-state-", run)


if __name__ == "__main__":
    sys.exit(main())
