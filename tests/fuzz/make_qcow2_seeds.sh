#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Regenerates the qcow2 seed images in corpus/qcow2/ with qemu-img and qemu-io (qemu-utils).
# Small cluster sizes keep them a few KiB; each covers a format feature the driver reads.
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)/corpus/qcow2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
q() { qemu-img create -q -f qcow2 "$@"; }
io() { qemu-io -f qcow2 "$@" >/dev/null; }

q -o compat=1.1,cluster_size=512 v3-empty.qcow2 1M
q -o compat=1.1,cluster_size=512 v3-data.qcow2 1M
io -c 'write -P 0xaa 0 4k' -c 'write -P 0xbb 100k 1k' -c 'write -z 200k 8k' -c 'discard 0 1k' v3-data.qcow2
q -o compat=0.10,cluster_size=4096 v2-data.qcow2 4M
io -c 'write -P 0x11 0 8k' -c 'write -P 0x22 3M 4k' v2-data.qcow2
q -o compat=1.1,cluster_size=4096 base.qcow2 2M
q -o compat=1.1,cluster_size=4096 -b base.qcow2 -F qcow2 v3-backing.qcow2 4M
io -c 'write -P 0x33 4k 4k' v3-backing.qcow2
truncate -s 1M base.raw
q -o compat=0.10,cluster_size=512 -b base.raw -F raw v2-backing-raw.qcow2 1M
head -c 65536 /dev/zero | tr '\0' 'x' > pattern.raw
qemu-img convert -q -c -O qcow2 -o cluster_size=4096 -f raw pattern.raw v3-compressed.qcow2
q -o compat=1.1,cluster_size=512,refcount_bits=1 v3-refcount1.qcow2 256k
io -c 'write -P 0x44 0 2k' v3-refcount1.qcow2
q -o compat=1.1,cluster_size=512,refcount_bits=64 v3-refcount64.qcow2 256k
io -c 'write -P 0x55 1k 2k' v3-refcount64.qcow2
q -o compat=1.1,cluster_size=512,lazy_refcounts=on v3-dirty.qcow2 256k
io -c 'write -P 0x66 0 4k' v3-dirty.qcow2
printf '\x00\x00\x00\x00\x00\x00\x00\x01' | dd of=v3-dirty.qcow2 bs=1 seek=72 conv=notrunc status=none
q -o compat=1.1 v3-64k.qcow2 16M
q -o compat=1.1,cluster_size=512 v3-big-virtual.qcow2 256M
for f in v3-empty v3-data v2-data v3-backing v2-backing-raw v3-compressed v3-refcount1 v3-refcount64 v3-dirty v3-64k \
         v3-big-virtual; do
  cp "$f.qcow2" "$out/$f"
done
ls -l "$out"
