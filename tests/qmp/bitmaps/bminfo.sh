#!/bin/sh
# Prints the bitmaps `qemu-img info` sees in a qcow2 image (one line each: name, granularity,
# flags), or "no bitmaps"; extra arguments go to qemu-img (e.g. -U for an image in use).
img=$1; shift
qemu-img info "$@" --output=json "$img" | python3 -c '
import json, sys
d = json.load(sys.stdin)["format-specific"]["data"]
bm = d.get("bitmaps")
if not bm:
    print("no bitmaps")
for b in bm or []:
    print(b["name"], b["granularity"], ",".join(b["flags"]) or "-")
'
