#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""--state-dir: a restart waits a moment for image locks (docs/job-state.md, "Restoring").

After kill -9, the previous daemon's files (and their OFD locks) stay open until the kernel has
torn down its io_uring, so a restart by systemd can find the images still locked for a moment.
Restoring retries a lock refusal for 5 s before it gives up on the job.

* A throttled mirror between two raw files added over QMP, stopped mid-way by `quit`.
* qemu-io holds the target open (write lock) for 1.5 s while the daemon starts again: the job
  comes back paused, and the log says it waited for the lock.
* The same with qemu-io holding it for 30 s: after the wait, the job comes back concluded with
  QEMU's lock error (error-code EAGAIN), and the daemon keeps serving.

Usage: mirror_locks.py BLOCKJOBD   (exit 77 without qemu-img/qemu-io)"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mirror_restart import Daemon, check, job, parked, state_test_main, wait_for  # noqa: E402

MiB = 1 << 20
SIZE = 64 * MiB


def hold(path, ms):
    """qemu-io with `path` open read-write (QEMU's image locks taken) for `ms` milliseconds."""
    p = subprocess.Popen(["qemu-io", "-f", "raw", "-c", f"sleep {ms}", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    check(p.poll() is None, f"qemu-io holds {os.path.basename(path)} ({p.stderr.read() if p.poll() else ''})")
    return p



def run(binary, d):
    state = os.path.join(d, "state")
    src = os.path.join(d, "src.raw")
    tgt = os.path.join(d, "tgt.raw")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", src, str(SIZE)], check=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P 0x5a 0 {SIZE}", src], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", tgt, str(SIZE)], check=True)

    dm = Daemon(binary, d, state)
    q = dm.q
    q.ok("blockdev-add", driver="raw", **{"node-name": "src"}, file={"driver": "file", "filename": src})
    q.ok("blockdev-add", driver="raw", **{"node-name": "tgt"}, file={"driver": "file", "filename": tgt})
    q.ok("blockdev-mirror", **{"job-id": "job0"}, device="src", target="tgt", sync="full", speed=8 * MiB)
    wait_for("some progress", lambda: job(q)["current-progress"] > 4 * MiB, 30)
    dm.stop("quit")

    # ---- a lock held for a moment: waited for -------------------------------------------------
    holder = hold(tgt, 1500)
    dm = Daemon(binary, d, state)
    j = parked(dm.q)
    holder.wait(timeout=30)
    check(j["status"] == "paused", f"with the lock held for 1.5 s, the job comes back paused: {j}")
    log = open(os.path.join(d, "daemon.log")).read()
    check("waiting up to 5 s for the image's previous user to exit" in log,
          "the log says the restore waited for the image lock")
    dm.stop("quit")

    # ---- a lock that stays: refused after the wait, the daemon serves on ------------------------
    holder = hold(tgt, 30000)
    try:
        t0 = time.monotonic()
        dm = Daemon(binary, d, state)
        j = parked(dm.q)
        waited = time.monotonic() - t0
        # qemu-io reads the target consistently; the mirror cannot share that (QEMU's words).
        check(j["status"] == "concluded" and j.get("error") == 'Failed to get shared "consistent read" lock'
              and j.get("error-code") == "EAGAIN",
              f"with the lock held on, the job comes back concluded with the lock error: {j}")
        check(waited >= 4, f"after waiting for the lock ({waited:.1f} s)")
        check(dm.q.ok("query-version")["qemu"]["major"] >= 0, "the daemon keeps serving")
        dm.stop("quit")
    finally:
        holder.kill()
        holder.wait()


def main():
    return state_test_main("bjd-locks-", run)


if __name__ == "__main__":
    sys.exit(main())
