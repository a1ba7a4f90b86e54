#!/usr/bin/env bash
# A checkpoint written with TP=2 (after 4 of 12 steps: output.stop_after) resumes with TP=1 and
# continues identically: per-step losses within 1e-5 and the final adapter within 1e-4 of an
# uninterrupted TP=1 run.
#   usage: test_tp_resume.sh PAFT MAKE_TASK COMPARE WORKDIR
set -euo pipefail
paft=$1 make_task=$2 compare=$3 work=$4
source "$(dirname "$0")/../mpi_env.sh"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
rm -rf "$work" && mkdir -p "$work"
"$make_task" "$work/task" > /dev/null
args=(train "$work/task/task.ini" stage=sft sft.steps=12 sft.batch=8 sft.micro_batch=4)
"$paft" "${args[@]}" output.dir="$work/reference" > "$work/reference.log"

mpirun -np 2 "$paft" "${args[@]}" parallel.tp=2 output.stop_after=4 output.dir="$work/b" \
  > "$work/b1.log" 2>&1
metrics="$work/b/sft/metrics.jsonl"
grep -q "stopped (output.stop_after) after step 4/12" "$work/b1.log" ||
  { echo "FAIL: the TP=2 run did not stop at step 4"; cat "$work/b1.log"; exit 1; }
stopped=$(wc -l < "$metrics")
"$paft" "${args[@]}" parallel.tp=1 output.dir="$work/b" > "$work/b2.log"
grep -q "resuming from" "$work/b2.log" || { echo "FAIL: no resume"; cat "$work/b2.log"; exit 1; }

losses() { sed -e 's/.*"step": \([0-9]*\), "loss": \([^,]*\),.*/\1 \2/' "$1"; }
paste <(losses "$work/reference/sft/metrics.jsonl") <(losses "$metrics") |
  awk '{ d = $2 - $4; if (d < 0) d = -d; r = $2 < 0 ? -$2 : $2;
         if ($1 != $3 || d > 1e-5 * r) { print "FAIL step " $1 ": " $2 " vs " $4; bad = 1 } }
       END { exit bad }'
"$compare" "$work/reference/sft/adapter.h5" "$work/b/sft/adapter.h5" 1e-4
echo "TP=2 stopped after step $stopped, resumed with TP=1: losses and adapter as uninterrupted"
echo "1 passed, 0 failed"
