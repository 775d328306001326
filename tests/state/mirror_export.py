#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""--state-dir with --export on the command line (docs/job-state.md, "The start").

A systemd unit keeps `--export ...,node-name=src` on its command line while the nodes and the
mirror were set up over QMP: at a restart the export must find the node that the state
directory brings back. Three starts:

1. the nodes, the export and a throttled mirror over QMP; SIGTERM mid-way;
2. `--export type=nbd,id=e0,node-name=src,writable=on` and no --blockdev: the daemon starts,
   the export serves the restored node, the job is back with its saved progress; a write
   through the export right away is mirrored; SIGTERM mid-way again;
3. the same --export given BEFORE --blockdev options identical to the saved definitions:
   those nodes are used (not added twice), the job is back, and after job-resume and
   job-complete the target equals the source.

Usage: mirror_export.py BLOCKJOBD   (exit 77 without qemu-img/qemu-io)"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mirror_restart import Daemon, check, job, parked, state_test_main, wait_for  # noqa: E402

MiB = 1 << 20
SIZE = 64 * MiB
EXPORT = ["--export", "type=nbd,id=e0,node-name=src,writable=on"]



def run(binary, d):
    state = os.path.join(d, "state")
    src = os.path.join(d, "src.qcow2")
    tgt = os.path.join(d, "tgt.raw")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", src, str(SIZE)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 24M", "-c", "write -P 0x22 40M 24M", src],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", tgt, str(SIZE)], check=True)

    # ---- 1. set up over QMP, SIGTERM mid-way ---------------------------------------------
    dm = Daemon(binary, d, state)
    q = dm.q
    q.ok("blockdev-add", driver="file", **{"node-name": "srcf"}, filename=src)
    q.ok("blockdev-add", driver="qcow2", **{"node-name": "src"}, file="srcf")
    q.ok("blockdev-add", driver="raw", **{"node-name": "tgt"}, file={"driver": "file", "filename": tgt})
    q.ok("block-export-add", type="nbd", id="e0", **{"node-name": "src"}, writable=True)
    q.ok("blockdev-mirror", **{"job-id": "job0"}, device="src", target="tgt", sync="full", speed=8 * MiB)
    wait_for("some progress", lambda: job(q)["current-progress"] > 8 * MiB)
    dm.stop("SIGTERM")

    # ---- 2. --export of a node only the state directory has ------------------------------
    dm = Daemon(binary, d, state, EXPORT)
    q = dm.q
    j = parked(q)
    check(j["status"] == "paused" and j.get("restore-note", "").startswith("saved progress: "),
          f"with --export on the command line the job is back: {j}")
    exports = q.ok("query-block-exports")
    # (it serves the job's filter above the source, as when it was added over QMP)
    check([e["id"] for e in exports] == ["e0"], f"the command line's export is there: {exports}")
    # A write through the export at once: the job must have it copied in the end.
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 2M 1M", "-c", "write -P 0x5b 50M 1M",
                    f"nbd+unix:///src?socket={dm.nbd}"], check=True, stdout=subprocess.DEVNULL)
    r = subprocess.run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5b 50M 1M", f"nbd+unix:///src?socket={dm.nbd}"],
                       capture_output=True, text=True)
    check(r.returncode == 0 and "Pattern verification failed" not in r.stdout, "reads through it see the write")
    q.ok("job-resume", id="job0")
    wait_for("more progress", lambda: job(q)["current-progress"] > j["current-progress"] + 4 * MiB)
    dm.stop("SIGTERM")

    # ---- 3. --export before identical --blockdev options ---------------------------------
    blockdevs = [
        "--blockdev", json.dumps({"driver": "file", "node-name": "srcf", "filename": src}),
        "--blockdev", json.dumps({"driver": "qcow2", "node-name": "src", "file": "srcf"}),
        "--blockdev", json.dumps({"driver": "raw", "node-name": "tgt", "file": {"driver": "file", "filename": tgt}}),
    ]
    dm = Daemon(binary, d, state, [*EXPORT, *blockdevs])
    q = dm.q
    j = parked(q)
    check(j["status"] == "paused" and j.get("restore-note", "").startswith("saved progress: "),
          f"with the command line's identical nodes the job is back too: {j}")
    names = sorted(n["node-name"] for n in q.ok("query-named-block-nodes") if not n["node-name"].startswith("#"))
    check(names.count("src") == 1 and names.count("tgt") == 1, f"the command line's nodes are used: {names}")
    q.ok("block-job-set-speed", device="job0", speed=0)
    q.ok("job-resume", id="job0")
    wait_for("READY", lambda: job(q)["status"] == "ready")
    q.ok("job-complete", id="job0")
    wait_for("the job to go", lambda: job(q) is None)
    dm.stop("quit")
    check(not os.listdir(state), "nothing is left in the state directory")
    r = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, tgt], capture_output=True, text=True)
    check(r.returncode == 0, f"target equals source, the write through the command line's export included: "
          f"{r.stdout.strip()} {r.stderr.strip()}")


def main():
    return state_test_main("bjd-export-", run)


if __name__ == "__main__":
    sys.exit(main())
