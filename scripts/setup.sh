#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs every Debian package blockjobd needs to build, test and benchmark.
# Idempotent: packages already present are skipped, so CI and developers can run it every time.
# `setup.sh --fuzz` also installs clang and libFuzzer for scripts/fuzz.sh (CI does not need
# them: its builds replay the fuzz corpus with g++).
set -euo pipefail

pkgs=(
  # build
  g++ cmake ninja-build pkg-config python3
  libboost1.81-dev libboost-json1.81-dev liburing-dev catch2 libspdlog-dev libfmt-dev
  libsystemd-dev zlib1g-dev libedit-dev libgnutls28-dev
  # test and benchmark peers
  qemu-utils qemu-system-common libnbd-bin nbdkit fio socat systemd gnutls-bin lintian
  # clones (reflink): an XFS to mount for tests/reflink/xfs.sh; filefrag shows shared extents
  xfsprogs e2fsprogs
  # Ceph RBD: librbd to build against; a one-node test cluster (tests/ceph/cluster.sh, no
  # manager); QEMU's rbd driver for qemu-img and qemu-storage-daemon
  ceph-mon ceph-osd ceph-common librbd-dev qemu-block-extra
)
if [ "${1:-}" = "--fuzz" ]; then
  pkgs+=(clang-14 libclang-rt-14-dev libfuzzer-14-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: all build and test packages present" >&2
