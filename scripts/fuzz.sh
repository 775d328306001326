#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Fuzzes blockjobd's untrusted inputs (tests/fuzz/README.md): builds the libFuzzer targets with
# clang-14 (ASan+UBSan) in build-fuzz/ and runs each for SECONDS (default 60) over its
# committed seeds (tests/fuzz/corpus/<target>/) plus what earlier runs found
# (build-fuzz/corpus/<target>/). Crashes, leaks, UB, hangs (>10 s) and single allocations over
# 256 MiB are bugs: their inputs land in build-fuzz/artifacts/<target>/ and the script fails.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     targets: qcow2 qmp keyval nbd
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(qcow2 qmp keyval nbd)

bash scripts/setup.sh --fuzz
dir=build-fuzz
# -O1 with line tables and asserts on: quicker to build than -O2 -g, and assertions are
# worth having while fuzzing.
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Fuzz -DCMAKE_CXX_FLAGS_FUZZ="-O1 -gline-tables-only" \
      -DCMAKE_CXX_COMPILER=clang++-14 \
      -DBJD_FUZZ=ON >/dev/null
ninja -C "$dir" -j"$(nproc)" "${targets[@]/#/fuzz_}"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "$dir/corpus/$t" "$dir/artifacts/$t"
  echo "fuzz: $t for ${secs}s" >&2
  if ! "$dir/tests/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -malloc_limit_mb=256 -max_len=1048576 -print_final_stats=1 \
        -artifact_prefix="$dir/artifacts/$t/" "$dir/corpus/$t" "tests/fuzz/corpus/$t" \
        2>"$dir/artifacts/$t/log"; then
    failed+=("$t")
    tail -n 60 "$dir/artifacts/$t/log" >&2
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^Done' "$dir/artifacts/$t/log" >&2 || true
done
if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]} (inputs in $dir/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${targets[*]}: no findings in ${secs}s each" >&2
