#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs what is needed, builds blockjobd and starts it on a built-in demo: two scratch
# images, a QMP socket, and a mirror whose progress blockjobctl shows until it is READY. The daemon
# then keeps running so you can connect to it; Ctrl-C stops it and removes the scratch files.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build blockjobd blockjobctl

dir=$(mktemp -d /var/tmp/blockjobd-demo.XXXXXX)
daemon_pid=
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

echo "demo: scratch directory $dir"
# A 1 GiB source with 256 MiB of data spread over it, and an empty sparse target.
python3 - "$dir/source.img" <<'PY'
import os, sys
size, extent = 1 << 30, 4 << 20
with open(sys.argv[1], "wb") as f:
    f.truncate(size)
    for i in range(0, size, 4 * extent):
        f.seek(i)
        f.write(os.urandom(extent))
PY
truncate -s 1G "$dir/target.img"

build/daemon/blockjobd \
  --chardev socket,id=m0,path="$dir/qmp.sock",server=on,wait=off --monitor chardev=m0 \
  --blockdev driver=file,node-name=source-file,filename="$dir/source.img",cache.direct=on \
  --blockdev driver=raw,node-name=source,file=source-file \
  --blockdev driver=file,node-name=target-file,filename="$dir/target.img",cache.direct=on \
  --blockdev driver=raw,node-name=target,file=target-file \
  2>"$dir/blockjobd.log" &
daemon_pid=$!

ctl=$PWD/build/tools/blockjobctl/blockjobctl
for _ in $(seq 100); do [ -S "$dir/qmp.sock" ] && break; sleep 0.1; done
echo "demo: starting blockdev-mirror source -> target at 100 MiB/s"
"$ctl" "$dir/qmp.sock" blockdev-mirror job-id=demo device=source target=target sync=full \
  speed=$((100 << 20)) >/dev/null
# A progress bar on a terminal, one line per change otherwise; ends when the job is READY.
"$ctl" "$dir/qmp.sock" watch --until-ready demo
echo "demo: mirror is READY: the target now follows every write to the source"

cat <<EOF

blockjobd is running (pid $daemon_pid); its log is $dir/blockjobd.log.
Talk QMP to it from another terminal (Tab completes commands and arguments):

  $ctl $dir/qmp.sock
  (blockjobctl) query-block-jobs
  (blockjobctl) job-complete id=demo

or one command at a time: $ctl $dir/qmp.sock query-block-jobs
(socat - UNIX-CONNECT:$dir/qmp.sock speaks raw QMP too.)

Press Ctrl-C here to stop the daemon and remove the scratch files.
EOF
wait "$daemon_pid"
