#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""sd_notify(3) as systemd sees it: a unix datagram socket stands in for the service manager.

Usage: sd_notify.py DAEMON WORKDIR

Run 1 (WatchdogSec=0.6s): NOTIFY_SOCKET and WATCHDOG_USEC=600000 in the environment. The
daemon must send READY=1, then WATCHDOG=1 at least every 0.6 s while it serves (it aims at
half that), and STOPPING=1 when SIGTERM starts the shutdown, before it exits with 0.
Run 2: no WATCHDOG_USEC: READY=1 and no WATCHDOG=1. Run 3: WATCHDOG_PID names another
process (the watchdog is not ours): no WATCHDOG=1. Prints one line per check; the values
that vary (counts, gaps) only as ok/wrong."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

daemon, work = sys.argv[1], sys.argv[2]


def qmp_version(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    f = s.makefile("rwb")
    json.loads(f.readline())
    for cmd in ("qmp_capabilities", "query-version"):
        f.write(json.dumps({"execute": cmd}).encode() + b"\n")
        f.flush()
        reply = json.loads(f.readline())
    s.close()
    return "return" in reply


def run(name, env_extra, watch_seconds):
    notify = os.path.join(work, f"notify-{name}.sock")
    qmp = os.path.join(work, f"qmp-{name}.sock")
    for p in (notify, qmp):
        if os.path.exists(p):
            os.unlink(p)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(notify)
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID", "NOTIFY_SOCKET")}
    env.update(NOTIFY_SOCKET=notify, **env_extra)
    err = open(os.path.join(work, f"daemon-{name}.stderr"), "wb")
    proc = subprocess.Popen([daemon, "--chardev", f"socket,id=c,path={qmp},server=on,wait=off",
                             "--monitor", "c", "--blockdev", "driver=null-co,node-name=n0"],
                            env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    msgs = []   # (time, message)

    def receive(until):
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            srv.settimeout(left)
            try:
                data = srv.recv(4096)
            except socket.timeout:
                return
            msgs.append((time.monotonic(), data.decode()))

    def seen(word):
        return [t for t, m in msgs if word in m.split("\n")]

    deadline = time.monotonic() + 10
    while not seen("READY=1") and time.monotonic() < deadline:
        receive(min(deadline, time.monotonic() + 0.1))
    ready = seen("READY=1")
    print(f"{name}: READY=1 {'received' if ready else 'missing'}")
    receive(time.monotonic() + watch_seconds)
    answers = qmp_version(qmp) if ready else False
    print(f"{name}: QMP answers: {answers}")
    pings = [t for t in seen("WATCHDOG=1") if ready and t >= ready[0]]
    stopping_before = bool(seen("STOPPING=1"))
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "hung"
    receive(time.monotonic() + 0.2)
    srv.close()
    return ready, pings, stopping_before, seen("STOPPING=1"), rc


ready, pings, early, stopping, rc = run("watchdog", {"WATCHDOG_USEC": "600000"}, 2.4)
# 2.4 s at one ping per 0.3 s: about 8. Accept 5 (a loaded machine, a sanitizer build), and
# no gap systemd would punish (0.6 s).
gaps = [b - a for a, b in zip(pings, pings[1:])]
print("watchdog: WATCHDOG=1 pings while serving:", "ok" if len(pings) >= 5 else f"wrong ({len(pings)})")
print("watchdog: longest gap below WatchdogSec:", "ok" if gaps and max(gaps) < 0.6 else f"wrong ({gaps})")
print("watchdog: STOPPING=1 only after SIGTERM:", not early and bool(stopping))
print("watchdog: exit status", rc)

_, pings, _, stopping, rc = run("no-watchdog", {}, 0.6)
print("no-watchdog: WATCHDOG=1 pings:", len(pings))
print("no-watchdog: STOPPING=1 at SIGTERM:", bool(stopping), "exit status", rc)

_, pings, _, _, rc = run("other-pid", {"WATCHDOG_USEC": "600000", "WATCHDOG_PID": "1"}, 0.7)
print("other-pid: WATCHDOG=1 pings:", len(pings), "exit status", rc)
