#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] [HARNESS...] - build the libFuzzer harnesses of paft's readers with
# clang (build-fuzz/, -DPAFT_FUZZ=ON) and run each for SECONDS (default 60) on 2 processes.
#
#   HARNESS: safetensors index model_config token_data config hdf5 peft (default: all of them)
#   PAFT_FUZZ_JOBS=N       processes per harness (default 2)
#   PAFT_FUZZ_BUILD=DIR    build directory (default build-fuzz)
#
# Each harness starts from its seeds (tests/fuzz/seeds/NAME, checked in) and its growing corpus
# (DIR/fuzz/corpus/NAME, kept between runs); what it finds lands in DIR/fuzz/artifacts/NAME/
# (crash-*, timeout-*, oom-*), its log in DIR/fuzz/NAME.log. Reproduce one finding with
#   source tests/mpi_env.sh; ASAN_OPTIONS=detect_leaks=0 DIR/tests/fuzz/fuzz_NAME ARTIFACT
# The run fails (status 1) when any harness left an artifact. tests/fuzz/README.md has more.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
[ $# -gt 0 ] && shift
harnesses=${*:-safetensors index model_config token_data config hdf5 peft}
jobs=${PAFT_FUZZ_JOBS:-2}
build=${PAFT_FUZZ_BUILD:-build-fuzz}

command -v clang >/dev/null || { echo "run.sh: clang (with libFuzzer) is needed" >&2; exit 2; }
CC=clang cmake -S . -B "$build" -DPAFT_FUZZ=ON -DPAFT_BUILD_TESTS=OFF -DPAFT_CUDA=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
targets=()
for h in $harnesses; do targets+=(--target "fuzz_$h"); done
cmake --build "$build" -j"$(nproc)" "${targets[@]}"

source tests/mpi_env.sh
# Open MPI's allocations at exit are not paft's; a fatal error's abandoned memory leaks on purpose
# (fuzz_harness.h). A UBSan report ends the input like an ASan one.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_NUM_THREADS=1

# One worker: libFuzzer stops at its first finding (and, to keep the memory that fatal errors
# abandon bounded, after 100,000 inputs); it is started again until the time is up. The workers
# share the corpus directory, so each restart begins from everything found so far.
worker() { # HARNESS LOG
  local end=$((SECONDS + seconds))
  while [ $SECONDS -lt $end ]; do
    # -timeout=1: a second for a file this small is a hang; -malloc_limit_mb: one allocation of
    # 256 MB for an input of at most 64 KB is trusting a header's count
    "$build/tests/fuzz/fuzz_$1" "$build/fuzz/corpus/$1" "tests/fuzz/seeds/$1" \
      -max_total_time=$((end - SECONDS)) -runs=100000 -timeout=1 -rss_limit_mb=4096 \
      -malloc_limit_mb=256 -max_len=65536 -close_fd_mask=1 -print_final_stats=1 \
      -artifact_prefix="$build/fuzz/artifacts/$1/" >>"$2" 2>&1 || true
  done
}

found=0
for h in $harnesses; do
  mkdir -p "$build/fuzz/corpus/$h" "$build/fuzz/artifacts/$h"
  log="$build/fuzz/$h.log"
  : >"$log"
  echo "== fuzz_$h: $seconds s on $jobs processes (log: $log)"
  for ((j = 0; j < jobs; j++)); do worker "$h" "$log.$j" & done
  wait
  cat "$log".* >"$log" && rm -f "$log".*
  execs=$(awk '/stat::number_of_executed_units/ {n += $2} END {print n + 0}' "$log")
  echo "   $execs inputs, corpus $(find "$build/fuzz/corpus/$h" -type f | wc -l) files"
  n=$(find "$build/fuzz/artifacts/$h" -type f | wc -l)
  if [ "$n" -gt 0 ]; then
    echo "   $n finding(s) in $build/fuzz/artifacts/$h"
    found=1
  fi
done
exit $found
