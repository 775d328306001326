#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Crash test for qcow2 writes: kill -9 the daemon in the middle of writes, then qemu-img check.

Usage: crash_writes.py DAEMON WORKDIR [ITERATIONS] [SEED]

Each iteration starts DAEMON (blockjobd or qemu-storage-daemon: the options are QEMU's) with a
qcow2 image (over a raw backing file, cluster sizes 512 B .. 64 KiB, v2 and v3, images made
by qemu-img and by the daemon's own blockdev-create) exported over NBD, runs fio random
writes and a qemu-io stream of writes, write-zeroes and discards against the export, kills
the daemon with SIGKILL after a random delay, and runs `qemu-img check`. Leaked clusters
(exit status 3) are allowed; corruption (status 2) or any other failure is not. Between
kills the image is reopened, so later iterations write on top of earlier crash leftovers.

Prints one line per iteration (without timings, so the output is stable) and
"N iterations, 0 corrupt". Exit status 1 on corruption or a setup failure. Bounded: about
2 s per iteration.
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def wait_path(path, proc, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def qmp(path, *commands):
    """Runs commands on a QMP socket; returns the responses (events skipped)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rwb")
    f.readline()
    out = []
    for c in ({"execute": "qmp_capabilities"},) + commands:
        f.write(json.dumps(c).encode() + b"\n")
        f.flush()
        while True:
            m = json.loads(f.readline())
            if "return" in m or "error" in m:
                break
        out.append(m)
    s.close()
    return out[1:]


def wait_concluded(sock, job, timeout=60.0):
    """Polls query-jobs until `job` has concluded (a loaded machine makes any sleep too short)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = qmp(sock, {"execute": "query-jobs"})[0].get("return", [])
        if any(j["id"] == job and j["status"] == "concluded" for j in jobs):
            return
        time.sleep(0.05)
    raise RuntimeError(f"job {job} did not conclude")


def create_with_daemon(daemon, work, image, size, cluster, version):
    """Makes `image` with the daemon's blockdev-create (file, then qcow2 with a backing)."""
    sock = os.path.join(work, "create.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    p = subprocess.Popen([daemon, "--chardev", f"socket,id=c,path={sock},server=on,wait=off", "--monitor", "c"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if not wait_path(sock, p):
            raise RuntimeError("daemon did not come up for blockdev-create")
        r = qmp(sock, {"execute": "blockdev-create", "arguments": {
            "job-id": "f", "options": {"driver": "file", "filename": image, "size": 0}}})
        wait_concluded(sock, "f")
        r += qmp(sock, {"execute": "job-dismiss", "arguments": {"id": "f"}},
                 {"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "f", "filename": image}},
                 {"execute": "blockdev-create", "arguments": {"job-id": "q", "options": {
                     "driver": "qcow2", "file": "f", "size": size, "cluster-size": cluster, "version": version,
                     "backing-file": "base.raw", "backing-fmt": "raw"}}})
        wait_concluded(sock, "q")
        r += qmp(sock, {"execute": "query-jobs"}, {"execute": "job-dismiss", "arguments": {"id": "q"}},
                 {"execute": "quit"})
        jobs = [j for m in r if isinstance(m.get("return"), list) for j in m["return"]]
        bad = [m for m in r if "error" in m] + [j for j in jobs if "error" in j]
        if bad:
            raise RuntimeError(f"blockdev-create failed: {bad}")
    finally:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def qemu_io_script(rng, size, n):
    lines = []
    for _ in range(n):
        length = rng.choice([512, 4096, 65536, 196608, 1 << 20])
        off = rng.randrange(0, size - length + 1, 512)
        op = rng.random()
        if op < 0.6:
            lines.append(f"write -P {rng.randrange(1, 255)} {off} {length}")
        elif op < 0.8:
            lines.append(f"write -z {off} {length}")
        else:
            lines.append(f"discard {off} {length}")
    lines.append("flush")
    return "\n".join(lines) + "\n"


def main():
    daemon, work = sys.argv[1], sys.argv[2]
    iterations = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else int(time.time())
    rng = random.Random(seed)
    size = 32 << 20
    base = os.path.join(work, "base.raw")
    run(["qemu-img", "create", "-q", "-f", "raw", base, str(size)])
    run(["qemu-io", "-f", "raw", "-c", f"write -P 0x5a 0 {size}", base])
    corrupt = 0
    image = os.path.join(work, "crash.qcow2")
    for it in range(iterations):
        # Each image takes two crashes (the second on the leftovers of the first), unless
        # the first left it corrupt: then it was set aside and a new one is made.
        fresh = it % 2 == 0 or not os.path.exists(image)
        # (512-byte clusters leave no room for a v3 feature table and a backing name.)
        cluster, version = [(512, "v2"), (4096, "v3"), (65536, "v3"), (65536, "v2")][(it // 2) % 4]
        if fresh:
            if os.path.exists(image):
                os.unlink(image)
            if (it // 2) % 2 == 0:
                create_with_daemon(daemon, work, image, size, cluster, version)
                how = "blockdev-create"
            else:
                compat = "0.10" if version == "v2" else "1.1"
                run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster},compat={compat}",
                     "-b", "base.raw", "-F", "raw", image, str(size)], cwd=work)
                how = "qemu-img"
        qsock = os.path.join(work, "qmp.sock")
        nsock = os.path.join(work, "nbd.sock")
        for s in (qsock, nsock):
            if os.path.exists(s):
                os.unlink(s)
        d = subprocess.Popen([daemon, "--chardev", f"socket,id=c,path={qsock},server=on,wait=off", "--monitor", "c",
                              "--blockdev", f"driver=file,node-name=f,filename={image}",
                              "--blockdev", "driver=qcow2,node-name=img,file=f,discard=unmap",
                              "--nbd-server", f"addr.type=unix,addr.path={nsock}",
                              "--export", "type=nbd,id=e,node-name=img,name=vm,writable=on"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if not wait_path(nsock, d):
            print(f"iteration {it}: daemon did not start (exit {d.poll()})")
            return 1
        uri = f"nbd+unix:///vm?socket={nsock}"
        fio = subprocess.Popen(["fio", "--name=w", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
                                "--bsrange=512-128k", "--iodepth=16", f"--size={size}", "--time_based",
                                "--runtime=5", f"--randseed={rng.randrange(1 << 30)}", "--output=/dev/null"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        qio = subprocess.Popen(["qemu-io", "-f", "raw", uri], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            qio.stdin.write(qemu_io_script(rng, size, 400))
            qio.stdin.flush()
        except BrokenPipeError:
            pass
        time.sleep(rng.uniform(0.1, 1.2))
        os.killpg(d.pid, signal.SIGKILL)
        d.wait()
        for p in (fio, qio):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        # The image's locks outlive the killed process while the kernel tears its io_uring
        # down: requests still in flight hold file references until they complete (slow
        # under ASan and load). Wait for that, as a restarted daemon would have to.
        deadline = time.monotonic() + 20
        while True:
            chk = run(["qemu-img", "check", image])
            if "lock" not in chk.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if chk.returncode not in (0, 3):
            corrupt += 1
            print(f"iteration {it}: CORRUPT (qemu-img check exit {chk.returncode}, seed {seed})")
            print(chk.stdout)
            # Keep the evidence, then start over from a fresh image.
            os.rename(image, f"{image}.corrupt{it}")
            continue
        state = "clean" if chk.returncode == 0 else "leaks only"
        print(f"iteration {it}: cluster {cluster} {version}{' ' + how if fresh else ''}: killed, check {state}")
    print(f"{iterations} iterations, {corrupt} corrupt")
    return 1 if corrupt else 0


if __name__ == "__main__":
    sys.exit(main())
