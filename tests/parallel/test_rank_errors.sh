#!/usr/bin/env bash
# An error on one rank ends the whole job with that rank's message, never a hang:
#   1. a file that only one rank cannot see (each rank runs in its own directory),
#   2. a rank failing in the middle of training (PAFT_FAULT_INJECT) while the others wait in a
#      collective.
#   usage: test_rank_errors.sh PAFT MAKE_TASK WORKDIR
set -uo pipefail
paft=$1 make_task=$2 work=$3
source "$(dirname "$0")/../mpi_env.sh"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
rm -rf "$work" && mkdir -p "$work/a" "$work/b"
"$make_task" "$work/task" > /dev/null
# rank 0 runs in a/ which has the model, rank 1 in b/ which does not
ln -s "$work/task/model" "$work/a/model"
for d in a b; do
  sed -e "s|^path = .*|path = model|" "$work/task/task.ini" > "$work/$d/task.ini"
done
passed=0 failed=0
expect() { # NAME REGEX LOG STATUS
  if [ "$4" -ne 0 ] && grep -Eq "$2" "$3"; then
    passed=$((passed + 1)); echo "$1: job ended with: $(grep -E "$2" "$3" | head -1)"
  else
    failed=$((failed + 1)); echo "FAIL $1 (status $4):"; cat "$3"
  fi
}
timeout 120 mpirun -np 1 -wdir "$work/a" "$paft" train task.ini stage=sft sft.steps=3 \
    output.dir="$work/out1" : -np 1 -wdir "$work/b" "$paft" train task.ini stage=sft \
    sft.steps=3 output.dir="$work/out1" > "$work/missing.log" 2>&1
expect "missing file on rank 1" "\[rank 1\] model: model path does not exist" "$work/missing.log" $?

PAFT_FAULT_INJECT=1:2 timeout 120 mpirun -np 2 -x PAFT_FAULT_INJECT "$paft" train \
    "$work/task/task.ini" stage=sft sft.steps=50 sft.batch=8 sft.micro_batch=4 \
    output.dir="$work/out2" > "$work/fault.log" 2>&1
expect "rank 1 fails mid-run" "\[rank 1\] fault injected by PAFT_FAULT_INJECT after step 2" \
    "$work/fault.log" $?

PAFT_FAULT_INJECT=3:1 timeout 120 mpirun -np 4 -x PAFT_FAULT_INJECT "$paft" run \
    "$work/task/task.ini" sft.steps=50 pref.steps=50 sft.batch=8 pref.batch=8 \
    sft.micro_batch=4 pref.micro_batch=4 output.dir="$work/out3" > "$work/run_fault.log" 2>&1
expect "paft run: a preference rank fails" "\[rank 3\] fault injected" "$work/run_fault.log" $?
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
