#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The whole test suite, as CI runs it: setup, a release build and an ASan+UBSan build, and
# every unit, schema and QMP scenario test of both under ctest, in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=$(nproc)

phase_start=$SECONDS
phase() {   # <what>: the time since the last phase, so a slow CI run says where it went
  echo "test.sh: $1 took $((SECONDS - phase_start)) s (total $SECONDS s)"
  phase_start=$SECONDS
}

run_build() {   # <dir> <cmake args...>
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
  ninja -C "$dir" -j"$jobs"
  phase "building $dir"
  # Scenario tests start daemons and wait on disks as much as CPUs: run more than nproc.
  ctest --test-dir "$dir" -j"$((jobs * 2))" --output-on-failure --timeout 600
  phase "testing $dir"
}

bash scripts/setup.sh
phase "setup"
run_build build -DCMAKE_BUILD_TYPE=Release
run_build build-asan -DCMAKE_BUILD_TYPE=Debug -DBJD_SANITIZE=ON
echo "all test suites passed (release and ASan+UBSan)"
