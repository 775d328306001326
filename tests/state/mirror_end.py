#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""--state-dir: the end of a kept mirror is crash-safe (docs/job-state.md, "The end of a job").

A job's files must be gone, durably, before its end takes effect: before job-complete's pivot
(from then on the guest writes the target), and before a cancel after READY reports success.
The test hook BJD_TEST_KILL_AT_JOB_END=<job-id> makes the daemon kill itself with SIGKILL right
after the files were removed, before the end takes effect. For each of the two ends:

* a 32 MiB qcow2 source, a raw target, the mirror to READY, then job-complete (or
  block-job-cancel) and the daemon dies at that point;
* the state directory holds nothing of the job;
* the target is then changed behind the daemon's back, as a guest writing the pivoted target
  would; the daemon starts again with the same --state-dir, the same nodes on the command line
  and --resume-jobs (an old mirror that came back would copy at once): no job comes back, and
  the target still holds what was written to it after the kill;
* the source is what it was.

Usage: mirror_end.py BLOCKJOBD   (exit 77 without qemu-img/qemu-io)"""
import hashlib
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mirror_restart import Daemon, check, job, state_test_main, wait_for  # noqa: E402

MiB = 1 << 20
SIZE = 32 * MiB


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def blockdevs(src, tgt):
    return [
        "--blockdev", json.dumps({"driver": "file", "node-name": "srcf", "filename": src}),
        "--blockdev", json.dumps({"driver": "qcow2", "node-name": "src", "file": "srcf"}),
        "--blockdev", json.dumps({"driver": "raw", "node-name": "tgt",
                                  "file": {"driver": "file", "filename": tgt}}),
    ]


def one_end(binary, top, how):
    d = os.path.join(top, how)
    os.mkdir(d)
    state = os.path.join(d, f"state-{how}")
    src = os.path.join(d, f"src-{how}.qcow2")
    tgt = os.path.join(d, f"tgt-{how}.raw")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", src, str(SIZE)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x21 0 8M", "-c", "write -P 0x42 20M 4M", src],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", tgt, str(SIZE)], check=True)

    os.environ["BJD_TEST_KILL_AT_JOB_END"] = "job0"
    try:
        dm = Daemon(binary, d, state, blockdevs(src, tgt))
    finally:
        del os.environ["BJD_TEST_KILL_AT_JOB_END"]
    q = dm.q
    q.ok("block-export-add", type="nbd", id="e0", **{"node-name": "src"}, writable=True)
    q.ok("blockdev-mirror", **{"job-id": "job0"}, device="src", target="tgt", sync="full")
    wait_for("READY", lambda: job(q)["status"] == "ready", 60)
    # A write through the export while READY: mirrored to the target before the end.
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x63 4M 1M", f"nbd+unix:///src?socket={dm.nbd}"],
                   check=True, stdout=subprocess.DEVNULL)
    wait_for("a checkpoint", lambda: os.path.exists(os.path.join(state, "job0.ckpt")), 30)
    check(os.path.exists(os.path.join(state, "job0.job.json")), f"{how}: the job is kept while it runs")
    if how == "complete":
        q.f.write(b'{"execute": "job-complete", "arguments": {"id": "job0"}}\n')
    else:
        q.f.write(b'{"execute": "block-job-cancel", "arguments": {"device": "job0"}}\n')
    q.f.flush()
    rc = dm.p.wait(timeout=60)
    dm.log.close()
    check(rc == -9, f"{how}: the daemon killed itself at the job's end (status {rc})")
    log = open(os.path.join(d, "daemon.log")).read()
    check("BJD_TEST_KILL_AT_JOB_END=job0" in log, f"{how}: the log says where it died")
    left = sorted(os.listdir(state))
    check(not any(n.startswith("job0") for n in left),
          f"{how}: the job's files were removed before the end took effect (left: {left})")
    src_sum = sha(src)

    # The target goes on without the daemon (a guest on the pivoted target would write it).
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x7e 0 2M", "-c", "write -P 0x7f 20M 1M", tgt],
                   check=True, stdout=subprocess.DEVNULL)
    tgt_sum = sha(tgt)

    dm = Daemon(binary, d, state, [*blockdevs(src, tgt), "--resume-jobs"])
    q = dm.q
    check(q.ok("query-jobs") == [], f"{how}: after the restart no job comes back")
    time.sleep(0.5)   # what a job that came back would have copied by now
    check(q.ok("query-jobs") == [], f"{how}: and none appears later")
    dm.stop("quit")
    check(sha(tgt) == tgt_sum, f"{how}: the target is untouched by the restart")
    check(sha(src) == src_sum, f"{how}: the source is untouched too")
    r = subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0x63 4M 1M", "-c", "read -P 0x7e 0 2M", tgt],
                       capture_output=True, text=True)
    check(r.returncode == 0 and "Pattern verification failed" not in r.stdout,
          f"{how}: the target holds the mirrored write and the later ones")


def main():
    def both(binary, d):
        for how in ("complete", "cancel"):
            one_end(binary, d, how)
    return state_test_main("bjd-end-", both, logs=("complete/daemon.log", "cancel/daemon.log"))


if __name__ == "__main__":
    sys.exit(main())
