#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A one-node Ceph cluster for the RBD tests, entirely inside one directory.
#
#   cluster.sh start DIR [--store bluestore|memstore] [--mgr]
#   cluster.sh stop DIR
#   cluster.sh status DIR
#
# `start` wipes DIR, then runs one monitor (msgr v2 on 127.0.0.1, a port free at start), one
# OSD and, only with --mgr, a manager (RBD does not need one; it costs ~300 MB of RSS). Every
# path the daemons use (data, logs, admin sockets, run and crash dirs, keyrings) is in DIR.
# It creates pool `rbd` (size 1, 8 PGs, no autoscaler, `rbd pool init`), waits until an
# image can be created and removed, prints
#   CEPH_CONF=DIR/ceph.conf
#   CEPH_KEYRING=DIR/client.admin.keyring
# and exits 0. `rbd -c DIR/ceph.conf` and librbd given only `conf=DIR/ceph.conf` connect as
# client.admin, whose keyring the [client] section names.
#
# Users besides client.admin, for the error cases of tests:
#   client.bjd-bad    its keyring (DIR/client.bjd-bad.keyring, named by the conf's
#                     [client.bjd-bad] section) holds a key the cluster does not know:
#                     authentication fails ("bad credentials").
#   client.bjd-nocaps a key the cluster knows, with `mon 'allow r'` and no OSD caps: it
#                     connects but may not touch pool rbd.
# DIR/client.NAME.key holds each user's bare base64 key, for QEMU's
# `--object secret,id=...,file=DIR/client.NAME.key` with an rbd node's `key-secret`.
#
# `stop` sends SIGTERM to the daemons `start` recorded (DIR/pids/*.pid: OSD, then manager,
# then monitor, each waited for; SIGKILL after 30 s) and to nothing else, then deletes the
# OSD's block file (the logs stay); it is idempotent.
# `status` prints each recorded daemon as running or stopped and exits 0 only when all run.
# Without the Ceph binaries, `start` says so and exits 77 (the tests skip).
#
# Object store: bluestore on a sparse file by default. memstore starts ~2 s faster, but it
# keeps every byte written in the OSD's memory: 1.37 GB of RSS after `rbd bench` wrote
# 1 GiB, against bluestore's 106 MB (its data is in the sparse DIR/osd.0.block and its cache
# is fixed small below). The RBD tests write 1-2 GiB, partly in parallel: several GB of RAM
# on a CI runner with memstore. Measured on 2 busy cores: bluestore ready in 7.5 s, mon
# 37 MB + OSD 50 MB at start; memstore 5.4 s, 37 + 41 MB.
set -euo pipefail

SKIP=77
die() { echo "cluster.sh: $*" >&2; exit 1; }
usage() { echo "usage: cluster.sh start DIR [--store bluestore|memstore] [--mgr] | stop DIR | status DIR" >&2; exit 2; }

# A recorded pid counts only while it is still one of this cluster's daemons (its command
# line names this DIR's ceph.conf), so a reused pid is never signalled.
ours() {
  local pid=$1 dir=$2
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-c $dir/ceph.conf"
}

stop_one() {   # stop_one DIR NAME: SIGTERM, wait up to 30 s, then SIGKILL
  local dir=$1 name=$2 f pid i
  f=$dir/pids/$name.pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && ours "$pid" "$dir"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
      ours "$pid" "$dir" || break
      sleep 0.1
    done
    if ours "$pid" "$dir"; then
      echo "cluster.sh: $name (pid $pid) ignored SIGTERM for 30 s, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      while ours "$pid" "$dir"; do sleep 0.1; done
    fi
  fi
  rm -f "$f"
}

cmd_stop() {
  local dir=$1 name
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  # The OSD first: stopped after the monitor, it waits for it before giving up.
  for name in osd.0 mgr.x mon.a; do
    stop_one "$dir" "$name"
  done
  # The OSD's data is GBs after the tests and `start` wipes it anyway; logs and conf stay,
  # for reading after a failed run.
  rm -f "$dir"/osd.*.block
}

cmd_status() {
  local dir=$1 name pid all=0 any=0
  [ -d "$dir/pids" ] || { echo "no cluster in $dir"; return 1; }
  dir=$(cd "$dir" && pwd)
  for name in mon.a mgr.x osd.0; do
    [ -f "$dir/pids/$name.pid" ] || continue
    any=1
    pid=$(cat "$dir/pids/$name.pid")
    if ours "$pid" "$dir"; then
      echo "$name pid $pid running"
    else
      echo "$name pid $pid stopped"
      all=1
    fi
  done
  [ "$any" = 1 ] || { echo "no cluster in $dir"; return 1; }
  return $all
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# run_daemon DIR NAME CMD...: starts a daemon in the foreground mode (-f) in the background,
# its output in DIR/log, and records its pid.
run_daemon() {
  local dir=$1 name=$2
  shift 2
  "$@" </dev/null >>"$dir/log/$name.stdout" 2>&1 &
  echo $! >"$dir/pids/$name.pid"
}

cmd_start() {
  local dir=$1 store=bluestore mgr=0
  shift
  while (($#)); do
    case $1 in
      --store) store=${2:-}; shift 2 || usage ;;
      --store=*) store=${1#--store=}; shift ;;
      --mgr) mgr=1; shift ;;
      *) usage ;;
    esac
  done
  case $store in bluestore | memstore) ;; *) usage ;; esac

  # A stale conf from an earlier run must not make the tests look for a cluster: the
  # directory is emptied, but only when it is empty already or one of ours.
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ -n "$(ls -A "$dir")" ] && [ ! -f "$dir/.cluster-sh" ]; then
    die "$dir is not empty and was not made by cluster.sh; not wiping it"
  fi
  cmd_stop "$dir"
  find "$dir" -mindepth 1 -delete
  touch "$dir/.cluster-sh"

  local b missing=()
  for b in ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd python3; do
    command -v "$b" >/dev/null || missing+=("$b")
  done
  ((mgr)) && ! command -v ceph-mgr >/dev/null && missing+=(ceph-mgr)
  if ((${#missing[@]})); then
    echo "cluster.sh: SKIP: Ceph is not installed (missing ${missing[*]}; scripts/setup.sh installs it)" >&2
    exit $SKIP
  fi

  local t0=$SECONDS conf=$dir/ceph.conf fsid port
  mkdir -p "$dir"/{log,run,crash,pids,mon.a,osd.0}
  # Whatever goes wrong from here on, leave no daemon behind.
  # shellcheck disable=SC2154  # rc is assigned inside the trap
  trap 'rc=$?; if [ $rc -ne 0 ]; then echo "cluster.sh: start failed (logs in $dir/log), stopping what started" >&2; cmd_stop "$dir"; fi' EXIT
  fsid=$(cat /proc/sys/kernel/random/uuid)
  port=$(free_port)

  cat >"$conf" <<EOF
# Written by tests/ceph/cluster.sh: a one-node test cluster, nothing outside $dir.
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind msgr2 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
# Admin sockets go to the run dir: DIR/run/ceph-mon.a.asok, a client's with its pid.
run dir = $dir/run
crash dir = $dir/crash
log file = $dir/log/\$name.log
mon cluster log file = $dir/log/cluster.log
# One OSD: pools of size 1, small and fixed PG counts, replicas chosen among OSDs.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
# CI disks are often more than 70% full, which would raise MON_DISK_LOW; and below 5% free
# the monitor refuses to start at all (mon data avail crit), silently in its log. A scratch
# cluster of a few hundred MB does not need that margin.
mon data avail warn = 2
mon data avail crit = 1
# The monitor commits map changes (a pool, an RBD snapshot id) at most once a second by
# default; a single monitor need not wait.
paxos propose interval = 0.05

[mon]
mon data = $dir/mon.\$id
mon initial members = a

[mgr]
mgr data = $dir/mgr.\$id

[osd]
osd data = $dir/osd.\$id
keyring = $dir/osd.\$id/keyring
osd objectstore = $store
# bluestore: the block file must be outside the data dir (inside, mkfs makes a symlink to
# itself). Sparse, so 8 GiB costs only what is written.
bluestore block path = $dir/osd.\$id.block
bluestore block create = true
bluestore block size = 8589934592
bluestore block db create = false
bluestore block wal create = false
# memstore only: its capacity (default 1 GiB, too small for the tests).
memstore device bytes = 4294967296
# A small, fixed cache instead of the autotuned several GB.
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 939524096

[client]
keyring = $dir/client.admin.keyring

[client.bjd-bad]
keyring = $dir/client.bjd-bad.keyring

[client.bjd-nocaps]
keyring = $dir/client.bjd-nocaps.keyring
EOF

  # cephx keys: the monitor's, the admin's (imported into the monitor's so it knows it), two
  # test users. bjd-nocaps gets into the cluster below; bjd-bad never does.
  ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$dir/client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool --create-keyring "$dir/client.bjd-bad.keyring" --gen-key -n client.bjd-bad >/dev/null
  ceph-authtool --create-keyring "$dir/client.bjd-nocaps.keyring" --gen-key -n client.bjd-nocaps \
    --cap mon 'allow r' >/dev/null
  # The monitor's mkfs puts every key of its keyring, with its caps, into the auth database.
  ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/client.admin.keyring" >/dev/null
  ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/client.bjd-nocaps.keyring" >/dev/null
  local u
  for u in admin bjd-bad bjd-nocaps; do
    ceph-authtool -p -n "client.$u" "$dir/client.$u.keyring" >"$dir/client.$u.key"
  done
  chmod 600 "$dir"/*.keyring "$dir"/*.key

  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null
  ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" --keyring "$dir/mon.keyring" \
    >>"$dir/log/mkfs.log" 2>&1 || die "ceph-mon --mkfs failed: $(tail -5 "$dir/log/mkfs.log")"
  run_daemon "$dir" mon.a ceph-mon -c "$conf" -i a -f

  local C=(ceph -c "$conf" --connect-timeout 30)

  if ((mgr)); then
    mkdir -p "$dir/mgr.x"
    timeout 60 "${C[@]}" auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
      -o "$dir/mgr.x/keyring" >/dev/null
    run_daemon "$dir" mgr.x ceph-mgr -c "$conf" -i x -f --keyring "$dir/mgr.x/keyring"
  fi

  local osd_uuid osd_key id
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  osd_key=$(ceph-authtool --gen-print-key)
  # The first command to the monitor: it also waits for it to come up.
  id=$(echo "{\"cephx_secret\": \"$osd_key\"}" | timeout 60 "${C[@]}" osd new "$osd_uuid" -i - 2>>"$dir/log/cli.log") ||
    die "the monitor did not come up on 127.0.0.1:$port: $(tail -3 "$dir/log/cli.log")"
  [ "$id" = 0 ] || die "ceph osd new returned '$id', expected 0"
  ceph-authtool --create-keyring "$dir/osd.0/keyring" -n osd.0 --add-key "$osd_key" >/dev/null
  ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$dir/log/mkfs.log" 2>&1 ||
    die "ceph-osd --mkfs failed: $(tail -5 "$dir/log/mkfs.log")"
  run_daemon "$dir" osd.0 ceph-osd -c "$conf" -i 0 -f

  timeout 60 "${C[@]}" osd pool create rbd 8 8 replicated >/dev/null 2>>"$dir/log/cli.log" ||
    die "ceph osd pool create failed: $(tail -3 "$dir/log/cli.log")"
  # The OSD may not be up yet: check for it twice a second rather than every 5 s.
  timeout 120 rbd -c "$conf" --objecter-tick-interval 0.5 pool init rbd 2>>"$dir/log/cli.log" ||
    die "rbd pool init failed: $(tail -3 "$dir/log/cli.log")"

  # Usable means an image can be created and removed (the PGs are active).
  local i ok=0
  for ((i = 0; i < 60; i++)); do
    if timeout 30 rbd -c "$conf" create --size 1M rbd/cluster-sh-probe >/dev/null 2>&1 &&
       timeout 30 rbd -c "$conf" rm --no-progress rbd/cluster-sh-probe >/dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 1
  done
  ((ok)) || die "pool rbd did not become usable within 60 s ($("${C[@]}" health 2>&1 | head -1))"
  trap - EXIT

  echo "cluster.sh: ready in $((SECONDS - t0)) s ($store, mon v2:127.0.0.1:$port)" >&2
  echo "CEPH_CONF=$conf"
  echo "CEPH_KEYRING=$dir/client.admin.keyring"
}

(($# >= 2)) || usage
sub=$1
dir=$2
shift 2
case $sub in
  start) cmd_start "$dir" "$@" ;;
  stop) (($# == 0)) || usage; cmd_stop "$dir" ;;
  status) (($# == 0)) || usage; cmd_status "$dir" ;;
  *) usage ;;
esac
