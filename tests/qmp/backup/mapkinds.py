#!/usr/bin/env python3
"""Reads `qemu-img map --output=json` on stdin and prints one line per run of guest bytes
of one kind (data, zero, unallocated "-"): start, length, kind. Host offsets are left out,
so runs that differ only in where their clusters lie are one line."""
import json
import sys

runs = []
for e in json.load(sys.stdin):
    kind = "data" if e["data"] else "zero" if e["zero"] else "-"
    if runs and runs[-1][2] == kind and runs[-1][0] + runs[-1][1] == e["start"]:
        runs[-1][1] += e["length"]
    else:
        runs.append([e["start"], e["length"], kind])
for start, length, kind in runs:
    print(start, length, kind)
