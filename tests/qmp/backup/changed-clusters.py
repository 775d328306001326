#!/usr/bin/env python3
"""Prints whether the data clusters of an incremental backup (a qcow2 overlay) are exactly
the clusters in which two full backups taken at the overlay's two points in time differ.

usage: changed-clusters.py OLD_FULL NEW_FULL INCREMENTAL.qcow2 [CLUSTER]"""
import json
import subprocess
import sys

old, new, inc = sys.argv[1:4]
cluster = int(sys.argv[4]) if len(sys.argv) > 4 else 65536

changed = set()
with open(old, "rb") as a, open(new, "rb") as b:
    i = 0
    while True:
        x, y = a.read(cluster), b.read(cluster)
        if not x and not y:
            break
        if x != y:
            changed.add(i)
        i += 1

out = subprocess.run(["qemu-img", "map", "-f", "qcow2", "--output=json", inc],
                     check=True, capture_output=True, text=True).stdout
held = set()
for e in json.loads(out):
    if e["depth"] == 0 and e["data"]:
        held.update(range(e["start"] // cluster, (e["start"] + e["length"]) // cluster))

print("changed clusters:", "some" if changed else "none")
print("incremental holds exactly them:", held == changed)
if held != changed:
    print("only in the incremental:", sorted(held - changed)[:20])
    print("missing from it:", sorted(changed - held)[:20])
