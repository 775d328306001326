#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A small XFS with reflink for the tests of clones (a mirror that shares the source's
# extents with its target), mounted from a sparse file in one directory.
#
#   xfs.sh start DIR    # prints BJD_REFLINK_DIR=DIR/mnt
#   xfs.sh stop DIR
#
# `start` makes DIR/xfs.img (1 GiB, sparse), formats it with `mkfs.xfs -m reflink=1` and
# mounts it on DIR/mnt through a loop device; `stop` unmounts it (lazily if something still
# holds it) and deletes the image and DIR/mnt; it is idempotent. Without root, mkfs.xfs or a loop device
# (a container without /dev/loop-control), `start` says why and exits 77: the tests skip.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
mnt=$dir/mnt

skip() { echo "xfs.sh: $*: the reflink tests skip" >&2; exit 77; }

case $cmd in
start)
    "$0" stop "$dir" 2>/dev/null || true   # no DIR/mnt left over to be taken for the XFS
    [ "$(id -u)" = 0 ] || skip "not root (mount needs it)"
    command -v mkfs.xfs >/dev/null || skip "no mkfs.xfs (Debian package xfsprogs)"
    [ -e /dev/loop-control ] || skip "no /dev/loop-control"
    mkdir -p "$mnt"
    truncate -s 1G "$dir/xfs.img"
    mkfs.xfs -q -f -m reflink=1 "$dir/xfs.img"
    if ! mount -o loop "$dir/xfs.img" "$mnt" 2>"$dir/mount.err"; then
        rmdir "$mnt"
        skip "mount -o loop failed: $(cat "$dir/mount.err")"
    fi
    chmod 1777 "$mnt"
    echo "BJD_REFLINK_DIR=$mnt"
    ;;
stop)
    if mountpoint -q "$mnt"; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt"
    fi
    rm -f "$dir/xfs.img" "$dir/mount.err"
    [ ! -d "$mnt" ] || rmdir "$mnt"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
