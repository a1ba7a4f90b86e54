#!/usr/bin/env bash
# The same training run on 1 rank, DP=2, TP=2 and TP=2 x DP=2: per-step losses agree within 1e-5
# relative, final adapters within 1e-4 (max |a - b| / max |b| per tensor).
#   usage: test_layouts.sh PAFT MAKE_TASK COMPARE WORKDIR STAGE
set -euo pipefail
paft=$1 make_task=$2 compare=$3 work=$4 stage=$5
source "$(dirname "$0")/../mpi_env.sh"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
rm -rf "$work" && mkdir -p "$work"
"$make_task" "$work/task" > /dev/null
sub=$([ "$stage" = sft ] && echo sft || echo pref)
args=(train "$work/task/task.ini" "stage=$stage" "$sub.steps=6" "$sub.batch=8" "$sub.micro_batch=2"
      "sft.l1=1e-3")   # the L1 term's tensor-parallel path too
losses() { sed -e 's/.*"step": \([0-9]*\), "loss": \([^,]*\),.*/\1 \2/' "$1"; }
failed=0 passed=0
for layout in "1 1" "2 1" "2 2" "4 2"; do
  set -- $layout
  out="$work/np$1_tp$2"
  mpirun -np "$1" "$paft" "${args[@]}" parallel.tp="$2" output.dir="$out" > "$out.log" 2>&1 ||
    { echo "FAIL: np=$1 tp=$2 did not run"; cat "$out.log"; exit 1; }
  [ "$1 $2" = "1 1" ] && continue
  # per-step losses within 1e-5 relative
  if paste <(losses "$work/np1_tp1/$sub/metrics.jsonl") <(losses "$out/$sub/metrics.jsonl") |
     awk '{ d = $2 - $4; if (d < 0) d = -d; r = $2 < 0 ? -$2 : $2;
            if ($1 != $3 || d > 1e-5 * r) { print "  step " $1 ": " $2 " vs " $4; bad = 1 } }
          END { exit bad }'; then
    passed=$((passed + 1)); echo "np=$1 tp=$2: per-step losses agree"
  else
    failed=$((failed + 1)); echo "FAIL: np=$1 tp=$2: losses differ"
  fi
  if "$compare" "$work/np1_tp1/$sub/adapter.h5" "$out/$sub/adapter.h5" 1e-4; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1)); echo "FAIL: np=$1 tp=$2: adapters differ"
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
