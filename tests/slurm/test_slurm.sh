#!/usr/bin/env bash
# A real single-node Slurm cluster (munged, slurmctld, slurmd on localhost, started for the test)
# runs a shipped job script from jobs/ on 4 tasks with a tiny generated model and data (PAFT:
# 2 SFT ranks || 2 DPO ranks, then the merge on all 4):
#   1. the job ends with status 0 and leaves its output, written by ONE 4-rank MPI world
#      (srun --mpi=pmix, not four single-rank worlds);
#   2. pre-emption: the same job, sent SIGUSR1 as `#SBATCH --signal=B:USR1@...` would, writes a
#      checkpoint, requeues itself, and its second run resumes and completes the stage.
# The daemons are stopped by pid (and their folder removed) however the test ends.
#   usage: test_slurm.sh PAFT MAKE_TASK WORKDIR
set -euo pipefail
paft=$1 make_task=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

# The job under test (PAFT itself: SFT || DPO, then the merge), the file it must leave in its
# output folder and the log line that shows one 4-rank MPI world ran it.
job=paft-mistral-7b.sbatch; export STAGES=; expect=merged.h5
world="4 ranks = 2 SFT (world ranks 0-1) + 2 preference"

fail() {
  echo "FAIL: $*"
  if [ -n "${cluster:-}" ] && [ -f "$cluster/log/slurmctld.log" ]; then
    echo "--- the end of slurmctld's log:"; tail -n 15 "$cluster/log/slurmctld.log"
    echo "--- the end of slurmd's log:"; tail -n 15 "$cluster/log/slurmd.log"
  fi
  exit 1
}
for tool in munged slurmctld slurmd sbatch srun scontrol; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] ||
    fail "$tool is not installed: this test needs a Slurm installation" \
         "(Debian/Ubuntu: apt-get install munge slurmctld slurmd slurm-client)"
done
[ "$(id -u)" = 0 ] || fail "the Slurm test starts slurmd and must run as root"

rm -rf "$work" && mkdir -p "$work"
cluster=$(mktemp -u /tmp/paft-slurm.XXXXXX)  # short: munge's socket path must fit in 108 bytes
trap 'bash "$here/stop_cluster.sh" "$cluster"' EXIT
bash "$here/start_cluster.sh" "$cluster"
# shellcheck source=/dev/null  # written by start_cluster.sh
source "$cluster/env"

"$make_task" "$work/task" > /dev/null
config=$work/task/task.ini
# What every job of the test gets: the program under test, root-friendly Open MPI, one CPU per task.
export PAFT=$paft OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 CONFIG=$config
# 4 tasks on the test node: the scripts ask for 8 tasks and 8 GPUs per node, overridden here.
# --time=15: the scripts' `--signal=B:USR1@300` must not fire during the test (Slurm may send it up
# to 60 s early, so at the start of a job with a limit under 6 minutes).
# micro_batch=2: batch 8 = 2 x 4 data-parallel ranks; 8 steps are enough to write an adapter.
submit=(sbatch --nodes=1 --ntasks-per-node=4 --cpus-per-task=1 --gpus-per-node=0 --time=15)
overrides=(sft.micro_batch=2 pref.micro_batch=2 sft.steps=8 pref.steps=8 output.checkpoint_every=0)

# job_state ID: the job's state, and its restart count after a colon (PENDING:0, COMPLETED:1).
job_state() {
  scontrol show job "$1" | tr ' ' '\n' | sed -n 's/^JobState=//p; s/^Restarts=//p' | paste -sd:
}
# wait_job ID: waits (180 s at most: a loaded 2-core machine runs these jobs slowly) until the job
# has ended, prints its final state. A requeued
# job is made eligible early (Slurm holds it for 2 minutes): once the node has finished cleaning
# up after its first run (idle again), plus a second, because slurmd refuses to launch a job
# whose credential is not newer, in whole seconds, than its revocation when the first run was
# killed. `sbatch --wait` would do for a job that is not requeued, but it polls at growing
# intervals and loses seconds.
wait_job() {
  local state="" released=""
  for _ in $(seq 1 1800); do
    state=$(job_state "$1")
    case "$state" in
      PENDING:[1-9]*)
        if [ -z "$released" ] && [ "$(sinfo -h -N -n localhost -o %t)" = idle ]; then
          sleep 1.5
          scontrol update JobId="$1" StartTime=now && released=1
        fi ;;
      COMPLETED:*|FAILED:*|CANCELLED:*|TIMEOUT:*|NODE_FAIL:*|OUT_OF_MEMORY:*|BOOT_FAIL:*|DEADLINE:*)
        echo "${state%%:*}"; return ;;
    esac
    sleep 0.1
  done
  echo "still-${state%%:*}-after-180s"
}

# ---- 1. a job from submission to its output -----------------------------------------------------
export OUT=$work/run
t0=$SECONDS
id=$("${submit[@]}" --parsable --output="$work/job1.out" "$root/jobs/$job" "${overrides[@]}")
state=$(wait_job "$id")
[ "$state" = COMPLETED ] || { cat "$work/job1.out"; fail "job 1 ($job) ended $state, not COMPLETED (status 0)"; }
[ "$(job_state "$id")" = COMPLETED:0 ] || fail "job 1 was requeued: $(job_state "$id")"
echo "job 1 ($job): completed in $((SECONDS - t0)) s"
[ -f "$OUT/$expect" ] || { cat "$work/job1.out"; fail "job 1 left no $OUT/$expect"; }
"$paft" inspect "$OUT/$expect" > "$work/inspect1.txt" || fail "paft inspect cannot read $OUT/$expect"
grep -q "$world" "$work/job1.out" ||
  { cat "$work/job1.out"; fail "the job did not run as one 4-rank MPI world"; }
grep -q "jobs: srun on 4 task(s), OMP_NUM_THREADS=1" "$work/job1.out" ||
  fail "jobs/lib.sh did not pick srun with one thread per task"

# ---- 2. pre-emption: SIGUSR1 to the batch shell, checkpoint, requeue, resume ---------------------
export OUT=$work/preempted STAGES=sft
steps=24  # the signal comes after step 3 and stops the run at step 4 or 5
id=$("${submit[@]}" --parsable --output="$work/job2.out" "$root/jobs/baseline-individual.sbatch" \
       "${overrides[@]}" sft.steps=$steps)
metrics=$OUT/sft/metrics.jsonl
for _ in $(seq 1 900); do
  [ -f "$metrics" ] && [ "$(wc -l < "$metrics")" -ge 3 ] && break
  sleep 0.1
done
[ -f "$metrics" ] || { cat "$work/job2.out"; fail "job 2 did not start training in 90 s"; }
scancel --batch --signal=USR1 "$id"
state=$(wait_job "$id")
[ "$state" = COMPLETED ] || { cat "$work/job2.out"; fail "job 2 ended $state, not COMPLETED"; }
[ "$(job_state "$id")" = COMPLETED:1 ] || fail "job 2 was not requeued exactly once: $(job_state "$id")"
grep -q "interrupted by a signal after step" "$work/job2.out" || { cat "$work/job2.out"; fail "paft was not interrupted"; }
grep -q "jobs: interrupted: requeueing job $id" "$work/job2.out" || fail "the job did not requeue itself"
grep -q "resuming from" "$work/job2.out" || { cat "$work/job2.out"; fail "the second run did not resume"; }
"$paft" inspect "$OUT/sft/adapter.h5" | grep -q "stage sft, step $steps;" ||
  fail "the resumed run did not finish all $steps steps"
[ "$(wc -l < "$metrics")" = "$steps" ] || fail "metrics.jsonl has $(wc -l < "$metrics") lines, not $steps"
echo "job 2: interrupted at step $(sed -n 's/.*interrupted by a signal after step \([0-9]*\).*/\1/p' "$work/job2.out"), requeued, resumed to step $steps"
echo "2 passed, 0 failed"
