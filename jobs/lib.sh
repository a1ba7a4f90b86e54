# shellcheck shell=bash
# jobs/lib.sh - what every job script shares (sourced, never run). After sourcing:
#
#   paft_launch CMD ARGS...   runs `paft CMD ARGS...` on every task of the job and waits for it
#   run_step CMD ARGS...      runs another command (lm_eval) the same way, on the batch node
#   $PAFT        the paft binary        $PAFT_ROOT   the repository (this file's parent folder)
#
# The launcher:
#   - inside a Slurm job: `srun --mpi=$PAFT_SRUN_MPI` (default pmix) on the job's tasks;
#   - outside Slurm (plain `bash jobs/x.sbatch`): `mpirun -np $PAFT_NP` (default 2);
#   - PAFT_LAUNCHER=mpirun inside a Slurm job: mpirun on the allocation (for clusters whose Slurm
#     has no PMIx plugin and where PAFT_SRUN_MPI=pmi2 does not work either);
#   - PAFT_LAUNCHER=srun|mpirun forces one; PAFT_LAUNCH_ARGS adds options to it.
#
# Threads: OMP_NUM_THREADS = SLURM_CPUS_PER_TASK inside Slurm (the CPU backend's OpenMP loops use
# the cores given to the task, no more), else OMP_NUM_THREADS if set, else cores / ranks;
# OMP_WAIT_POLICY=passive so ranks that share cores do not spin against each other;
# OPENBLAS_NUM_THREADS = OMP_NUM_THREADS unless set.
#
# Pre-emption and time limits: the scripts ask for `#SBATCH --signal=B:USR1@300 --requeue`, so
# five minutes before the limit Slurm sends SIGUSR1 to this batch shell. paft_launch forwards it
# (as SIGUSR1; SIGTERM too) to a running `paft train` / `paft run`, which writes a checkpoint and
# exits 0; the job then requeues itself (`scontrol requeue`), and the rerun resumes from the
# checkpoint (stages already complete are skipped). Other commands (merge, export, lm_eval) are
# stopped and run again from their start by the rerun: the scripts write their outputs under
# temporary names and skip the outputs that exist. Outside Slurm (or with PAFT_REQUEUE=0) the
# script ends with status 75 (not finished): run the same command again.

if [ -n "${BASH_VERSION:-}" ] && [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "jobs/lib.sh is sourced by the job scripts, not run" >&2
  exit 2
fi
set -euo pipefail

# Absolute before the cd below: a relative PAFT_ROOT or PAFT (a path, not a name looked up in
# PATH) names a place from where the job was started.
PAFT_ROOT=$(cd "${PAFT_ROOT:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
case "${PAFT:-}" in
  /* | "") ;;
  */*) PAFT=$(pwd)/$PAFT ;;
esac
# Relative paths in the shipped configurations (inputs/..., runs/...) are relative to this folder.
cd "${PAFT_WORKDIR:-$PAFT_ROOT}"

# The program: $PAFT, else the build tree's, else the one on PATH.
if [ -z "${PAFT:-}" ]; then
  if [ -x "$PAFT_ROOT/build/paft" ]; then PAFT=$PAFT_ROOT/build/paft
  else PAFT=$(command -v paft || true)
  fi
fi
if [ -z "$PAFT" ] || [ ! -x "$PAFT" ]; then
  echo "jobs: no paft program: build it (cmake --build build) or set PAFT=/path/to/paft" >&2
  exit 2
fi

# ---- the launcher --------------------------------------------------------------------------------
if [ -n "${SLURM_JOB_ID:-}" ]; then
  PAFT_LAUNCHER=${PAFT_LAUNCHER:-srun}
  PAFT_NP=${SLURM_NTASKS:-1}
else
  PAFT_LAUNCHER=${PAFT_LAUNCHER:-mpirun}
  PAFT_NP=${PAFT_NP:-2}
fi
case "$PAFT_LAUNCHER" in
  srun)
    # --kill-on-bad-exit: one failed rank ends the step instead of leaving the others hanging.
    PAFT_LAUNCH=(srun --mpi="${PAFT_SRUN_MPI:-pmix}" --kill-on-bad-exit=1) ;;
  mpirun)
    # --bind-to none: Open MPI binds each rank to one core by default (for np <= 2), which would
    # leave a rank's OpenMP threads on one core.
    PAFT_LAUNCH=(mpirun -np "$PAFT_NP" --bind-to none) ;;
  *)
    echo "jobs: PAFT_LAUNCHER=$PAFT_LAUNCHER is not srun or mpirun" >&2
    exit 2 ;;
esac
if [ -n "${PAFT_LAUNCH_ARGS:-}" ]; then
  read -r -a extra_launch_args <<< "$PAFT_LAUNCH_ARGS"
  PAFT_LAUNCH+=("${extra_launch_args[@]}")
fi

# ---- threads -------------------------------------------------------------------------------------
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
  export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
  # Slurm 22.05 to 23.02: srun does not inherit the job's --cpus-per-task; without this each task
  # of the step would get one CPU, and all its threads would share it.
  export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
elif [ -z "${OMP_NUM_THREADS:-}" ]; then
  OMP_NUM_THREADS=$(( $(nproc) / PAFT_NP ))
  export OMP_NUM_THREADS=$(( OMP_NUM_THREADS > 0 ? OMP_NUM_THREADS : 1 ))
fi
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
# OpenBLAS's pthreads flavour sizes its pool by this, not by OMP_NUM_THREADS (its OpenMP flavour
# reads OMP_NUM_THREADS): the same cores either way, not one thread per core of the node per rank.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$OMP_NUM_THREADS}
# Open MPI refuses to start as root without these (containers, CI runners).
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

echo "jobs: $PAFT_LAUNCHER on $PAFT_NP task(s), OMP_NUM_THREADS=$OMP_NUM_THREADS," \
     "job ${SLURM_JOB_ID:-none} (restart ${SLURM_RESTART_COUNT:-0}), in $PWD"

# ---- running commands, and the pre-emption signal ------------------------------------------------
PAFT_INTERRUPTED=0 # a stop signal arrived: requeue once the running command has ended
_paft_child=""     # the running command's pid
_paft_mode=""      # checkpoint: it saves its state on SIGUSR1; restart: it is stopped and rerun
_paft_woken=0      # the last `wait` returned because of a trap, not because the command ended

_paft_on_signal() {
  PAFT_INTERRUPTED=1
  _paft_woken=1
  [ -n "$_paft_child" ] || { echo "jobs: received SIG$1"; return; }
  if [ "$_paft_mode" = checkpoint ]; then
    # srun and mpirun both pass SIGUSR1 on to every task; SIGTERM is turned into SIGUSR1 too,
    # because mpirun answers SIGTERM by killing the ranks rather than forwarding it.
    echo "jobs: received SIG$1: asking paft to checkpoint and stop"
    kill -USR1 "$_paft_child" 2>/dev/null || true
  else
    echo "jobs: received SIG$1: stopping the running command; it reruns after the requeue"
    kill -TERM "$_paft_child" 2>/dev/null || true
  fi
}
trap '_paft_on_signal USR1' USR1
trap '_paft_on_signal TERM' TERM

# _paft_run MODE CMD...: runs CMD in the background (so that the traps above run at once) and
# waits for it. A failure ends the job script with the command's status; after a stop signal
# the job requeues itself.
_paft_run() {
  paft_requeue_if_interrupted  # a signal between two commands: do not start the next one
  _paft_mode=$1; shift
  echo "+ $*"
  "$@" &
  _paft_child=$!
  local status
  while :; do
    _paft_woken=0
    status=0
    wait "$_paft_child" || status=$?
    # A trapped signal interrupts `wait`; the command is still running (or its status is kept
    # for the next `wait`), so wait again.
    [ "$_paft_woken" = 1 ] || break
  done
  _paft_child=""
  # A command stopped on purpose (restart mode) may end with any status: it is simply rerun.
  if [ "$status" != 0 ] && ! { [ "$PAFT_INTERRUPTED" = 1 ] && [ "$_paft_mode" = restart ]; }; then
    echo "jobs: '$*' failed with status $status" >&2
    exit "$status"
  fi
  paft_requeue_if_interrupted
}

# paft_launch CMD ARGS...: `paft CMD ARGS...` on every task of the job. `paft train` and `paft
# run` checkpoint on the stop signal (and resume when the job reruns); other commands are stopped
# and rerun from their start.
paft_launch() {
  case "$1" in train|run) _paft_run checkpoint "${PAFT_LAUNCH[@]}" "$PAFT" "$@" ;;
               *)         _paft_run restart "${PAFT_LAUNCH[@]}" "$PAFT" "$@" ;; esac
}

# run_step CMD ARGS...: any other command (lm_eval), on the batch node; on the stop signal it is
# stopped and rerun from its start after the requeue.
run_step() { _paft_run restart "$@"; }

# After an interruption: requeue the job (inside Slurm) and end this run of the script. Requeued,
# the job runs again, so this run ends with status 0. Not requeued (outside Slurm, PAFT_REQUEUE=0)
# the work is unfinished: status PAFT_EXIT_INTERRUPTED (75, EX_TEMPFAIL: "try again"), so that
# `a.sbatch && b.sbatch` and `sbatch --dependency=afterok:` do not start the next step on outputs
# that do not exist yet.
PAFT_EXIT_INTERRUPTED=75
paft_requeue_if_interrupted() {
  [ "$PAFT_INTERRUPTED" = 1 ] || return 0
  if [ -n "${SLURM_JOB_ID:-}" ] && [ "${PAFT_REQUEUE:-1}" = 1 ]; then
    echo "jobs: interrupted: requeueing job $SLURM_JOB_ID; the next run continues where this one stopped"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "jobs: interrupted: run the same command again to continue where this one stopped" \
       "(exit status $PAFT_EXIT_INTERRUPTED: not finished)" >&2
  exit "$PAFT_EXIT_INTERRUPTED"
}
