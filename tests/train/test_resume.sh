#!/usr/bin/env bash
# A run stopped by a signal (SIGUSR1, Slurm's pre-emption warning) and resumed gives the same
# per-step losses and the same adapter, bit for bit, as an uninterrupted run.
#   usage: test_resume.sh PAFT MAKE_TASK WORKDIR STAGE
set -euo pipefail
paft=$1 make_task=$2 work=$3 stage=$4
rm -rf "$work" && mkdir -p "$work"
"$make_task" "$work/task"
cfg="$work/task/task.ini"
steps=150
sub=$([ "$stage" = sft ] && echo sft || echo pref)

# 1. uninterrupted
"$paft" train "$cfg" stage="$stage" "$sub.steps=$steps" output.dir="$work/a" > "$work/a.log"

# 2. interrupted after a few steps, then resumed
"$paft" train "$cfg" stage="$stage" "$sub.steps=$steps" output.dir="$work/b" > "$work/b1.log" &
pid=$!
metrics="$work/b/$sub/metrics.jsonl"
for _ in $(seq 1 600); do
  [ -f "$metrics" ] && [ "$(wc -l < "$metrics")" -ge 3 ] && break
  sleep 0.02
done
kill -USR1 "$pid"
wait "$pid"   # must exit 0: a clean stop
grep -q "interrupted by a signal" "$work/b1.log" || {
  echo "FAIL: the run was not interrupted (it finished before the signal?)"; cat "$work/b1.log"; exit 1; }
[ -f "$work/b/$sub/checkpoint.h5" ] || { echo "FAIL: no checkpoint written"; exit 1; }
[ ! -f "$work/b/$sub/adapter.h5" ] || { echo "FAIL: adapter written by an interrupted run"; exit 1; }
stopped=$(wc -l < "$metrics")
"$paft" train "$cfg" stage="$stage" "$sub.steps=$steps" output.dir="$work/b" > "$work/b2.log"
grep -q "resuming from" "$work/b2.log" || { echo "FAIL: the second run did not resume"; exit 1; }

# 3. same losses at every step, same adapter
losses() { sed -e 's/.*"step": \([0-9]*\), "loss": \([^,]*\),.*/\1 \2/' "$1"; }
if ! diff <(losses "$work/a/$sub/metrics.jsonl") <(losses "$metrics") > "$work/loss.diff"; then
  echo "FAIL: per-step losses differ"; head "$work/loss.diff"; exit 1; fi
h5diff "$work/a/$sub/adapter.h5" "$work/b/$sub/adapter.h5" /lora /lora || {
  echo "FAIL: adapters differ"; exit 1; }
echo "stopped after step $stopped of $steps, resumed: $steps identical losses, identical adapter"
echo "1 passed, 0 failed"
