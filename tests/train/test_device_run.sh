#!/usr/bin/env bash
# `paft run` (one SFT rank || one preference rank, then the merge) on a device backend against
# the same run on the CPU backend: per-step losses, both adapters and the merged model within TOL,
# and the device
# run with activation recomputation identical in losses to the one without. Then the device run
# on 4 ranks (DP=2 and TP=2 groups: the device-resident gradient reductions) and one stopped
# after 2 steps and resumed, against the 2-rank device run.
#   usage: test_device_run.sh PAFT MAKE_TASK COMPARE WORKDIR DEVICE TOL [folded]
# DEVICE emulate runs everywhere (TOL 1e-5: the same CPU ops); cuda needs a GPU (both ranks share
# it, so the MPI collective path; TOL for bf16) and reports itself skipped (77) without one.
# `folded`: every run with LoRA r = 8, where the CUDA backend folds the q, k, v and gate, up
# adapters into their frozen GEMMs (model_device.c); the device runs must say so, and one more
# run with PAFT_LORA_FOLDED=0 must give the same adapters within bf16 rounding.
set -euo pipefail
paft=$1 make_task=$2 compare=$3 work=$4 device=$5 tol=$6 variant=${7:-}
# a resumed run repeats the same arithmetic: bitwise on the emulation, near it on a GPU
resume_tol=$([ "$device" = emulate ] && echo 0 || echo 1e-3)
# other layouts sum in other orders: tests/parallel's 1e-4 for the adapters (or TOL if larger)
layout_tol=$(awk -v t="$tol" 'BEGIN { print (t > 1e-4 ? t : 1e-4) }')
# Adapters of runs that compute differently (cpu and device, TP=2 and TP=1) are compared per
# tensor by max |a - b| / max |b| on the emulation (the same fp32 ops), but by ||a - b|| / ||b||
# in bf16: AdamW's first updates are about lr sign(g), so the bf16 rounding of the few entries
# with near-zero gradients moves them by part of a step (on the CPU emulator of the CUDA backend
# the maximum reaches 0.19 while the losses agree to 1e-4 and the norms to 0.03).
metric=$([ "$device" = emulate ] || echo norm)
source "$(dirname "$0")/../mpi_env.sh"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
rm -rf "$work" && mkdir -p "$work"
"$make_task" "$work/task" > /dev/null
common=("$work/task/task.ini" sft.steps=4 pref.steps=4 sft.batch=4 pref.batch=4
        sft.micro_batch=2 pref.micro_batch=2 sft.l1=1e-3 merge.method=ties)
[ "$variant" = folded ] && common+=(lora.r=8 lora.alpha=16)
run() { # name, extra settings... [-- ranks]
  local name=$1 np=2 settings=(); shift
  while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then np=$2; break; fi
    settings+=("$1"); shift
  done
  if ! mpirun -np "$np" "$paft" run "${common[@]}" output.dir="$work/$name" "${settings[@]}" >> "$work/$name.log" 2>&1; then
    if grep -q "no CUDA device" "$work/$name.log"; then echo "skipped: no GPU here"; exit 77; fi
    echo "FAIL: $name did not run"; cat "$work/$name.log"; exit 1
  fi
}
run device model.device="$device"
run recompute model.device="$device" model.recompute=true
run cpu
losses() { sed -e 's/.*"step": \([0-9]*\), "loss": \([^,]*\),.*/\1 \2/' "$1"; }
failed=0 passed=0
for stage in sft pref; do
  for pair in "cpu device $tol" "device recompute 0"; do
    set -- $pair
    if paste <(losses "$work/$1/$stage/metrics.jsonl") <(losses "$work/$2/$stage/metrics.jsonl") |
       awk -v tol="$3" '{ d = $2 - $4; if (d < 0) d = -d; r = $2 < 0 ? -$2 : $2;
              if ($1 != $3 || d > tol * r) { print "  step " $1 ": " $2 " vs " $4; bad = 1 } }
            END { exit bad }'; then
      passed=$((passed + 1)); echo "$stage: $1 and $2 losses agree (tol $3)"
    else
      failed=$((failed + 1)); echo "FAIL: $stage: $1 and $2 losses differ"
    fi
  done
  if "$compare" "$work/cpu/$stage/adapter.h5" "$work/device/$stage/adapter.h5" "$tol" $metric; then
    passed=$((passed + 1)); echo "$stage: adapters agree"
  else
    failed=$((failed + 1)); echo "FAIL: $stage: adapters differ"
  fi
done
# the device-resident gradient reductions under data and tensor parallelism (4 ranks: each group
# DP=2, or TP=2), and a stop after 2 steps resumed from its checkpoint, against the 2-rank runs
run dp2 model.device="$device" -- 4
run tp2 model.device="$device" parallel.tp=2 -- 4
run sliced model.device="$device" output.stop_after=2
grep -q "checkpoint written" "$work/sliced.log" || { failed=$((failed + 1)); echo "FAIL: no checkpoint"; }
run sliced model.device="$device"
for name in dp2 tp2 sliced; do
  for stage in sft pref; do
    if [ $name = sliced ]; then args=("$resume_tol"); else args=("$layout_tol" $metric); fi
    if "$compare" "$work/device/$stage/adapter.h5" "$work/$name/$stage/adapter.h5" "${args[@]}"; then
      passed=$((passed + 1)); echo "$name: $stage adapter agrees with the 2-rank device run"
    else
      failed=$((failed + 1)); echo "FAIL: $name: $stage adapter differs"
    fi
  done
done
# the merged models (base + both deltas, TIES, bf16): within TOL of each other
# (bf16: by norm, as the adapters, since a few near-zero-gradient entries of the deltas differ by
# a good part of a step; the base weights dominate each tensor's norm, so 1e-2 is still tight)
merged_tol=$([ "$device" = emulate ] && echo 0 || echo 1e-2)
if "$compare" "$work/cpu/merged.h5" "$work/device/merged.h5" "$merged_tol" /weights $metric; then
  passed=$((passed + 1)); echo "merged models agree"
else
  failed=$((failed + 1)); echo "FAIL: merged models differ"
fi
if [ "$variant" = folded ]; then
  for name in device recompute dp2 tp2 sliced; do
    grep -q "LoRA folded into" "$work/$name.log" || { failed=$((failed + 1)); echo "FAIL: $name did not fold"; }
  done
  PAFT_LORA_FOLDED=0 run unfolded model.device="$device"
  if grep -q "LoRA folded into" "$work/unfolded.log"; then
    failed=$((failed + 1)); echo "FAIL: PAFT_LORA_FOLDED=0 folded"
  fi
  for stage in sft pref; do
    if "$compare" "$work/unfolded/$stage/adapter.h5" "$work/device/$stage/adapter.h5" 2e-2 $metric; then
      passed=$((passed + 1)); echo "$stage: the folded run's adapter agrees with the unfolded one"
    else
      failed=$((failed + 1)); echo "FAIL: $stage: folded and unfolded adapters differ"
    fi
  done
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
