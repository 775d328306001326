#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The whole test suite, as CI runs it: setup, then three builds (release, ASan+UBSan,
# ThreadSanitizer) and their tests under ctest, in parallel (docs/testing.md).
#
# Tests mostly wait on disks and daemons, so each build's tests run while the next build
# compiles (niced: the tests get the CPU when they want it); their output is printed when
# they end. The TSan tests (unit tests and QMP scenarios) run last, alone.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=$(nproc)

phase_start=$SECONDS
phase() {   # <what>: the time since the last phase and the disk left, so a slow or failed
            # CI run says where its time and space went
  echo "test.sh: $1 took $((SECONDS - phase_start)) s (total $SECONDS s;" \
       "$(df -h --output=avail . | tail -1 | tr -d ' ') free on the disk)"
  phase_start=$SECONDS
}

build() {   # <dir> <cmake args...>: a unity build, a third less compile time (docs/testing.md)
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DCMAKE_UNITY_BUILD=ON "$@" >/dev/null
  nice -n 10 ninja -C "$dir" -j"$jobs"
}

background_tests() {   # <build dir> <log>: ctest in the background, its pid in $tests_pid
  ctest --test-dir "$1" -j"$((jobs * 2))" --output-on-failure --timeout 600 >"$2" 2>&1 &
  tests_pid=$!
}
wait_tests() {   # <what> <log>
  local rc=0
  wait "$tests_pid" || rc=$?
  cat "$2"
  if [ "$rc" -ne 0 ]; then
    echo "test.sh: $1 tests failed (status $rc)"
    exit "$rc"
  fi
}

bash scripts/setup.sh
phase "setup"
build build -DCMAKE_BUILD_TYPE=Release
phase "building build"

# Scenario tests start daemons and wait on disks as much as CPUs: more than nproc at once.
background_tests build build/test-release.log
# -g1: line tables are all ASan's reports need, at half the disk of -g.
if ! build build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-g1 -DBJD_SANITIZE=ON; then
  kill "$tests_pid" 2>/dev/null || true
  exit 1
fi
phase "building build-asan (release tests running alongside)"
wait_tests release build/test-release.log
phase "waiting for the release tests"

background_tests build-asan build-asan/test.log
# -O1 -g1: TSan's recommended optimisation, line tables for its reports, a quicker build.
if ! build build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" -DBJD_TSAN=ON; then
  kill "$tests_pid" 2>/dev/null || true
  exit 1
fi
phase "building build-tsan (ASan tests running alongside)"
wait_tests ASan build-asan/test.log
phase "waiting for the ASan tests"
# A race report fails the test: the unit tests exit 66 (TSan's exit code), the scenario runner
# looks for reports in the daemon's stderr. tests/tsan.supp lists what is not ours. No Ceph
# cluster (-FA ceph): its cases skip, visibly; librbd is not instrumented (docs/testing.md).
TSAN_OPTIONS="suppressions=$PWD/tests/tsan.supp second_deadlock_stack=1 history_size=4" \
  ctest --test-dir build-tsan -L 'unit|qmp' -FA ceph -j"$((jobs * 2))" --output-on-failure --timeout 600
phase "testing build-tsan"
echo "all test suites passed (release, ASan+UBSan and TSan)"
