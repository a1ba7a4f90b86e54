#!/usr/bin/env bash
# paft run on 4 ranks (2 SFT + 2 DPO, at the same time) produces the same two adapters as the
# two stages run separately on 2 ranks each (bit for bit: the same arithmetic in the same order).
#   usage: test_run.sh PAFT MAKE_TASK WORKDIR
set -euo pipefail
paft=$1 make_task=$2 work=$3
source "$(dirname "$0")/../mpi_env.sh"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
rm -rf "$work" && mkdir -p "$work"
"$make_task" "$work/task" > /dev/null
common=("$work/task/task.ini" sft.steps=6 pref.steps=5 sft.batch=8 pref.batch=8
        sft.micro_batch=2 pref.micro_batch=2)
mpirun -np 4 "$paft" run "${common[@]}" output.dir="$work/run" > "$work/run.log" 2>&1 ||
  { cat "$work/run.log"; exit 1; }
grep -q "2 SFT (world ranks 0-1) + 2 preference" "$work/run.log" ||
  { echo "FAIL: unexpected group split"; cat "$work/run.log"; exit 1; }
mpirun -np 2 "$paft" train "${common[@]}" stage=sft output.dir="$work/separate" > "$work/sft.log" 2>&1
mpirun -np 2 "$paft" train "${common[@]}" stage=dpo output.dir="$work/separate" > "$work/dpo.log" 2>&1
failed=0
for stage in sft pref; do
  if h5diff "$work/run/$stage/adapter.h5" "$work/separate/$stage/adapter.h5" /lora /lora; then
    echo "$stage: paft run's adapter equals the separate stage's"
  else
    echo "FAIL: $stage adapters differ"; failed=$((failed + 1))
  fi
done
echo "$((2 - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
