#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Checks the start time of a node's (or drive's) counters, which the transcripts mask.

usage: start_time.py QMP_SOCK METRICS_SOCK node=NAME|drive=NAME [--save FILE | --compare FILE]

Reads `start_time_ns` from query-blockstats (node view for node=, device view for drive=)
through its own QMP monitor, and bjd_stats_start_time_seconds of the same source from
GET /metrics, then prints whether they are the same instant (to the nanosecond) and whether
it lies in the last 10 minutes. --save stores the value; --compare tells how it relates to
a saved one ("same start": the counters continue; "new start": they were reset)."""
import json
import re
import socket
import sys
import time


def qmp(path, command, arguments):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    f = s.makefile("rwb")

    def call(cmd, args=None):
        msg = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        f.write(json.dumps(msg).encode() + b"\r\n")
        f.flush()
        while True:
            reply = json.loads(f.readline())
            if "return" in reply or "error" in reply:
                return reply

    json.loads(f.readline())   # greeting
    call("qmp_capabilities")
    reply = call(command, arguments)
    s.close()
    return reply


def metrics(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return data.split(b"\r\n\r\n", 1)[1].decode()


def main():
    qmp_sock, metrics_sock, which = sys.argv[1:4]
    kind, name = which.split("=", 1)
    reply = qmp(qmp_sock, "query-blockstats", {"query-nodes": kind == "node"})
    key = "node-name" if kind == "node" else "device"
    entries = [e for e in reply["return"] if e.get(key) == name]
    if len(entries) != 1 or "start_time_ns" not in entries[0]["stats"]:
        print(f"{which}: no start_time_ns in query-blockstats: {reply}")
        return
    ns = entries[0]["stats"]["start_time_ns"]
    want = f"{ns // 10**9}.{ns % 10**9:09d}"
    m = re.search(rf'^bjd_stats_start_time_seconds\{{{kind}="{re.escape(name)}"\}} (\S+)$',
                  metrics(metrics_sock), re.M)
    got = m.group(1) if m else None
    print(f"{which}: QMP start_time_ns and /metrics start time "
          + ("agree" if got == want else f"differ: {want} vs {got}"))
    age = time.time() - ns / 1e9
    print(f"{which}: start time " + ("is recent" if -1 <= age <= 600 else f"is not recent ({age:.0f} s ago)"))
    if len(sys.argv) == 6 and sys.argv[4] == "--save":
        open(sys.argv[5], "w").write(str(ns))
    elif len(sys.argv) == 6 and sys.argv[4] == "--compare":
        old = int(open(sys.argv[5]).read())
        print(f"{which}: " + ("same start" if ns == old else "new start"))


if __name__ == "__main__":
    main()
