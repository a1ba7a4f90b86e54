#!/usr/bin/env bash
# A job script run with plain bash (no Slurm) and stopped with SIGUSR1, as the README says to stop
# one: paft checkpoints, and the script ends with status 75 ("not finished, run it again"), not 0,
# so `a.sbatch && b.sbatch` does not go on to a step whose inputs are not written. Run again, it
# resumes and ends with status 0. PAFT_REQUEUE=0 inside a job behaves the same way.
#   usage: test_interrupt_plain.sh PAFT MAKE_TASK WORKDIR
set -euo pipefail
paft=$1 make_task=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fail() { echo "FAIL: $*"; exit 1; }

rm -rf "$work" && mkdir -p "$work"
"$make_task" "$work/task" > /dev/null
# Not a Slurm job, even when the tests run inside an allocation.
unset SLURM_JOB_ID SLURM_ARRAY_TASK_ID SLURM_CPUS_PER_TASK SLURM_NTASKS
export PAFT=$paft CONFIG=$work/task/task.ini OUT=$work/run STAGES=sft PAFT_NP=1 OMP_NUM_THREADS=1
steps=1000
metrics=$OUT/sft/metrics.jsonl

bash "$root/jobs/baseline-individual.sbatch" sft.steps=$steps > "$work/run1.log" 2>&1 &
job=$!
for _ in $(seq 1 600); do
  [ -f "$metrics" ] && [ "$(wc -l < "$metrics")" -ge 3 ] && break
  kill -0 "$job" 2> /dev/null || break
  sleep 0.1
done
[ -f "$metrics" ] || { cat "$work/run1.log"; fail "the job did not start training in 60 s"; }
kill -USR1 "$job"
status=0
wait "$job" || status=$?
grep -q "interrupted by a signal after step" "$work/run1.log" ||
  { cat "$work/run1.log"; fail "paft was not interrupted (did it finish all $steps steps first?)"; }
[ "$status" = 75 ] || { cat "$work/run1.log"; fail "the interrupted job ended with status $status, not 75"; }
grep -q "jobs: interrupted: run the same command again" "$work/run1.log" || fail "no 'run it again' message"
! grep -q "individual baselines done" "$work/run1.log" || fail "the interrupted job said it was done"

bash "$root/jobs/baseline-individual.sbatch" sft.steps=$steps > "$work/run2.log" 2>&1 ||
  { cat "$work/run2.log"; fail "the rerun failed"; }
grep -q "resuming from" "$work/run2.log" || { cat "$work/run2.log"; fail "the rerun did not resume"; }
"$paft" inspect "$OUT/sft/adapter.h5" | grep -q "stage sft, step $steps;" ||
  fail "the resumed run did not finish all $steps steps"
echo "1 passed, 0 failed"
