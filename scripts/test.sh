#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The whole test suite, as CI runs it: setup, a release build and an ASan+UBSan build, and
# every unit, schema and QMP scenario test of both under ctest, in parallel.
#
# The release tests mostly wait on disks and daemons, so they run while the ASan build
# compiles (niced: the tests get the CPU when they want it); their output is printed when
# they end. The ASan tests run last, alone.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=$(nproc)

phase_start=$SECONDS
phase() {   # <what>: the time since the last phase, so a slow CI run says where it went
  echo "test.sh: $1 took $((SECONDS - phase_start)) s (total $SECONDS s)"
  phase_start=$SECONDS
}

build() {   # <dir> <cmake args...>
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
  nice -n 10 ninja -C "$dir" -j"$jobs"
}

bash scripts/setup.sh
phase "setup"
build build -DCMAKE_BUILD_TYPE=Release
phase "building build"

release_log=build/test-release.log
ctest --test-dir build -j"$((jobs * 2))" --output-on-failure --timeout 600 >"$release_log" 2>&1 &
release_tests=$!
release_start=$SECONDS
if ! build build-asan -DCMAKE_BUILD_TYPE=Debug -DBJD_SANITIZE=ON; then
  kill "$release_tests" 2>/dev/null || true
  exit 1
fi
phase "building build-asan (release tests running alongside)"
release_rc=0
wait "$release_tests" || release_rc=$?
cat "$release_log"
if [ "$release_rc" -ne 0 ]; then
  echo "test.sh: release tests failed (status $release_rc)"
  exit "$release_rc"
fi
phase "waiting for the release tests"
# Scenario tests start daemons and wait on disks as much as CPUs: more than nproc at once.
ctest --test-dir build-asan -j"$((jobs * 2))" --output-on-failure --timeout 600
phase "testing build-asan"
echo "all test suites passed (release and ASan+UBSan)"
