#!/usr/bin/env python3
# Prints the clusters of IMAGE that its own layer allocates (depth 0), as start/length/data/
# zero, from `qemu-img map --output=json` (host offsets left out: they differ by allocator).
import json, subprocess, sys
out = subprocess.run(["qemu-img", "map", "-U", "--output=json", sys.argv[1]], check=True,
                     capture_output=True, text=True).stdout
for e in json.loads(out):
    if e["depth"] == 0 and (e["data"] or e["zero"]) and e.get("present", True):
        print(e["start"], e["length"], "data" if e["data"] else "zero")
