#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""blockjobctl against the real daemon, on a pseudo-terminal where it matters.

Checks: Tab completion of a command name and of an argument name in the interactive shell
(and that the completed line runs), events printed while the prompt waits, Ctrl-C discarding
the line, one-shot output
and exit statuses 0, 1 and 2, `watch` on a pipe (key=value lines while a mirror runs, up to
READY; a cancelled job ends the watch with status 1) and `watch` on a pty (a drawn bar).

    blockjobctl_pty.py --daemon build/daemon/blockjobd --ctl build/tools/blockjobctl/blockjobctl
"""
import argparse
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|[\x07\x08]")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)
    return cond


class Pty:
    """A child process on a pty; `expect` reads until a regex matches the text seen so far
    (escape sequences removed)."""

    def __init__(self, argv, env):
        self.master, slave = pty.openpty()
        os.set_blocking(self.master, False)
        def controlling_tty():
            # A session of its own with the pty as its controlling terminal, as in a
            # terminal window: ^C then raises SIGINT in the child.
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     preexec_fn=controlling_tty, close_fds=True)
        os.close(slave)
        self.raw = b""

    def read_some(self, timeout):
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:
            return False
        self.raw += data
        return bool(data)

    def text(self, start=0):
        # libedit redraws after a completion with "\r" and a move to the column: dropping
        # both leaves the characters in the order they land on the line.
        return ANSI.sub(b"", self.raw[start:]).replace(b"\r", b"").decode("utf-8", "replace")

    def expect(self, pattern, timeout=10, start=0):
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text(start))
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0 or (not self.read_some(min(left, 0.2)) and self.proc.poll() is not None
                             and not self.read_some(0.1)):
                return None

    def drain(self):
        """Reads until the child has been quiet for 0.3 s."""
        while self.read_some(0.3):
            pass

    def send(self, data):
        os.write(self.master, data.encode() if isinstance(data, str) else data)

    def wait(self, timeout=10):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read_some(0.1)
        while self.read_some(0.05):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            return None
        return self.proc.returncode

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--ctl", required=True)
    args = ap.parse_args()
    args.daemon, args.ctl = os.path.abspath(args.daemon), os.path.abspath(args.ctl)
    tmp = tempfile.mkdtemp(prefix="blockjobctl-test.")
    env = dict(os.environ, HOME=tmp, TERM="xterm", COLUMNS="100", LINES="30")
    env.pop("BLOCKJOBCTL_SOCKET", None)
    daemon = None
    try:
        size = 64 << 20
        with open(os.path.join(tmp, "src.img"), "wb") as f:
            f.truncate(size)
            for off in range(0, size, 4 << 20):
                f.seek(off)
                f.write(os.urandom(1 << 20))
        for t in ("dst.img", "dst2.img"):
            with open(os.path.join(tmp, t), "wb") as f:
                f.truncate(size)
        # One monitor per client (a socket chardev serves one client at a time).
        names = ["shell", "cmd", "watch"]
        socks = {n: os.path.join(tmp, n + ".sock") for n in names}
        cmd = [args.daemon]
        for i, n in enumerate(names):
            cmd += ["--chardev", f"socket,id=c{i},path={socks[n]},server=on,wait=off", "--monitor", f"chardev=c{i}"]
        for node, img in (("src", "src.img"), ("dst", "dst.img"), ("dst2", "dst2.img")):
            cmd += ["--blockdev", f"driver=file,node-name={node}-file,filename={os.path.join(tmp, img)}",
                    "--blockdev", f"driver=raw,node-name={node},file={node}-file"]
        errf = open(os.path.join(tmp, "daemon.log"), "wb")
        daemon = subprocess.Popen(cmd, cwd=tmp, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                  start_new_session=True)
        deadline = time.monotonic() + 20
        while not all(os.path.exists(s) for s in socks.values()):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("daemon did not start: " + open(os.path.join(tmp, "daemon.log")).read())
            time.sleep(0.05)

        def ctl(*a, timeout=20):
            return subprocess.run([args.ctl, *a], env=env, capture_output=True, text=True, timeout=timeout)

        # -- one-shot mode
        r = ctl(socks["cmd"], "query-block-jobs")
        check(r.returncode == 0 and json.loads(r.stdout) == [], f"one-shot query-block-jobs prints [] (rc {r.returncode}, {r.stdout!r})")
        r = ctl(socks["cmd"], "block-dirty-bitmap-add", "node=src", "name=b0", "granularity=131072", "persistent=false")
        check(r.returncode == 0 and json.loads(r.stdout) == {}, f"one-shot with typed arguments returns {{}} (rc {r.returncode}, {r.stderr!r})")
        r = ctl("-c", socks["cmd"], '{"execute": "query-block", "id": 7}')
        check(r.returncode == 0 and r.stdout.count("\n") == 1 and isinstance(json.loads(r.stdout), list),
              f"one-shot raw JSON with -c prints one line (rc {r.returncode})")
        r = ctl(socks["cmd"], "block-job-set-speed", "device=nope", "speed=1")
        check(r.returncode == 1 and r.stdout == "" and "Block job 'nope' not found" in r.stderr,
              f"one-shot QMP error: status 1, message on stderr (rc {r.returncode}, {r.stderr!r})")
        r = ctl(socks["cmd"], "block-dirty-bitmap-add", "node=src", "name=b1", "granularity=big")
        check(r.returncode == 1 and "granularity" in r.stderr, f"a string where an int belongs is a QMP error (rc {r.returncode}, {r.stderr!r})")
        r = ctl(os.path.join(tmp, "absent.sock"), "query-jobs")
        check(r.returncode == 2 and "cannot connect" in r.stderr, f"no server: status 2 (rc {r.returncode})")
        r = ctl(socks["cmd"], "query-jobs", "oops")
        check(r.returncode == 2 and "key=value" in r.stderr, f"bad shorthand: status 2 (rc {r.returncode}, {r.stderr!r})")

        # -- the interactive shell on a pty
        sh = Pty([args.ctl, socks["shell"]], env)
        try:
            check(sh.expect(r"\(blockjobctl\) ") is not None, "shell shows its prompt")
            mark = line_start = len(sh.raw)
            sh.send("block-job-set-sp\t")
            check(sh.expect(r"block-job-set-speed ", start=mark, timeout=5) is not None,
                  "Tab completes the command name block-job-set-sp -> block-job-set-speed")
            mark = len(sh.raw)
            sh.send("dev\t")
            check(sh.expect(r"device=", start=mark, timeout=5) is not None, "Tab completes the argument name dev -> device=")
            sh.send("nope sp\t")
            sh.expect(r"speed=", start=mark, timeout=5)
            sh.send("1\r")
            m = sh.expect(r"Block job 'nope' not found[\s\S]*\(blockjobctl\) ", start=mark)
            check(sh.expect(r"block-job-set-speed device=nope speed=1\n", start=line_start) is not None,
                  "the line reads block-job-set-speed device=nope speed=1")
            check(m is not None, "the completed line ran: block-job-set-speed device=nope speed=1")
            # An event arrives while the prompt waits: printed, then the prompt comes back.
            sh.send("query-b")
            time.sleep(0.3)
            mark = len(sh.raw)
            r = ctl(socks["cmd"], "block-dirty-bitmap-remove", "node=src", "name=b0")
            r = ctl(socks["cmd"], "blockdev-mirror", "job-id=ev", "device=src", "target=dst2", "sync=full",
                    "speed=1048576")
            m = sh.expect(r'"event": ?"JOB_STATUS_CHANGE"[^\n]*\n[\s\S]*\(blockjobctl\) query-b', start=mark)
            check(m is not None, "an event is printed while typing and the prompt and line are redrawn")
            ctl(socks["cmd"], "job-cancel", "id=ev")
            sh.send("\x15")   # ^U: clear the line
            # Ctrl-C (SIGINT from the terminal) discards the line being typed.
            sh.drain()
            sh.send("garbage words")
            sh.drain()
            mark = len(sh.raw)
            sh.send("\x03")
            sh.expect(r"\(blockjobctl\) ", start=mark, timeout=5)
            sh.drain()
            sh.send("query-jobs\r")
            m = sh.expect(r'"return": \[[\s\S]*\(blockjobctl\) ', start=mark)
            check(m is not None and "Expected a key=value" not in sh.text(mark),
                  "Ctrl-C discards the line: the next line runs alone")
            sh.send("\x04")   # ^D: quit
            rc = sh.wait()
            check(rc == 0, f"Ctrl-D ends the shell with status 0 (rc {rc})")
            check(os.path.exists(os.path.join(tmp, ".blockjobctl_history")), "history is saved")
        finally:
            sh.close()
        # wait for the cancelled job to go
        deadline = time.monotonic() + 10
        while json.loads(ctl(socks["cmd"], "query-jobs").stdout) and time.monotonic() < deadline:
            time.sleep(0.1)

        # -- watch on a pipe while a mirror runs (64 MiB at 16 MiB/s: about 4 s)
        r = ctl(socks["cmd"], "blockdev-mirror", "job-id=m0", "device=src", "target=dst", "sync=full",
                f"speed={16 << 20}")
        check(r.returncode == 0, f"mirror m0 started (rc {r.returncode}, {r.stderr!r})")
        r = ctl(socks["watch"], "watch", "--interval", "0.3", "--until-ready", "m0", timeout=60)
        lines = [dict(kv.split("=", 1) for kv in l.split()) for l in r.stdout.splitlines()]
        running = [l for l in lines if l.get("status") == "running"]
        offsets = [int(l["offset"]) for l in lines]
        check(r.returncode == 0, f"watch --until-ready ends with 0 (rc {r.returncode}, {r.stderr!r})")
        check(len(running) >= 3, f"watch printed {len(running)} running lines (want >= 3)")
        keys = [{k: v for k, v in l.items() if k not in ("rate", "eta")} for l in lines]
        check(offsets == sorted(offsets) and all(a != b for a, b in zip(keys, keys[1:])),
              "offsets never go back, and each line differs from the last in more than rate/eta")
        check(bool(lines) and lines[-1].get("status") == "ready" and lines[-1]["offset"] == lines[-1]["len"] == str(size),
              f"the last line is READY at offset = len = {size}")
        check(any("eta" in l and "rate" in l for l in running), "running lines carry rate and eta")
        check(all("dirty-bytes" in l for l in lines), "lines carry dirty-bytes (query-block-jobs reports it)")
        check("\x1b" not in r.stdout, "no escape sequences on a pipe")
        ctl(socks["cmd"], "job-complete", "id=m0")

        # -- a watched job that is cancelled ends the watch with status 1
        deadline = time.monotonic() + 10
        while json.loads(ctl(socks["cmd"], "query-jobs").stdout) and time.monotonic() < deadline:
            time.sleep(0.1)
        ctl(socks["cmd"], "blockdev-mirror", "job-id=m1", "device=src", "target=dst2", "sync=full", "speed=1048576")
        w = subprocess.Popen([args.ctl, socks["watch"], "watch", "m1"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        ctl(socks["cmd"], "job-cancel", "id=m1")
        out, err = w.communicate(timeout=20)
        check(w.returncode == 1 and out.splitlines()[-1:] == ["job=m1 status=cancelled"],
              f"a cancelled job ends watch with status 1 and says so (rc {w.returncode}, last {out.splitlines()[-1:]})")

        # -- watch on a pty draws a bar
        deadline = time.monotonic() + 10
        while json.loads(ctl(socks["cmd"], "query-jobs").stdout) and time.monotonic() < deadline:
            time.sleep(0.1)
        ctl(socks["cmd"], "blockdev-mirror", "job-id=m2", "device=src", "target=dst2", "sync=full", f"speed={32 << 20}")
        wp = Pty([args.ctl, socks["watch"], "watch", "--interval", "0.2", "--until-ready", "m2"], env)
        try:
            rc = wp.wait(timeout=30)
            raw = wp.raw.decode("utf-8", "replace")
            check(rc == 0, f"watch on a pty ends with 0 at READY (rc {rc})")
            check(re.search(r"m2 mirror running \[#*\.+\] ", raw) is not None, "a partly filled bar is drawn while running")
            check(re.search(r"m2 mirror ready \[#+\] +100\.0% 64\.0 MiB/64\.0 MiB", raw) is not None,
                  "the final bar is full: 100.0% 64.0 MiB/64.0 MiB")
            check("\x1b[1A" in raw, "bars are redrawn in place (cursor up)")
            check("ETA" in raw and "dirty" in raw, "the bar line shows ETA and dirty bytes")
        finally:
            wp.close()
        ctl(socks["cmd"], "job-cancel", "id=m2")
    finally:
        if daemon:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if failures:
            print("daemon log:", open(os.path.join(tmp, "daemon.log"), errors="replace").read()[-3000:])
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
