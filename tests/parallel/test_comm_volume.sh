#!/usr/bin/env bash
# The communication volume of one training step, measured (an MPI profiling library counting the
# bytes given to MPI_Allreduce on the TP and DP communicators) equals the formulas of
# analysis/comm_volume.py, byte for byte, for SFT (with L1) and DPO on TP=2 x DP=2.
# One step = (run of 3 steps) - (run of 2 steps), so setup and file writing cancel out.
#   usage: test_comm_volume.sh PAFT MAKE_TASK LIBCOUNT WORKDIR SRCDIR
set -euo pipefail
paft=$1 make_task=$2 lib=$3 work=$4 src=$5
source "$(dirname "$0")/../mpi_env.sh"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
rm -rf "$work" && mkdir -p "$work"
k=5  # fixed prompt length: every record has 2k+3 tokens, so every batch has the same shape
"$make_task" "$work/task" 5 $k > /dev/null
T=$((2 * k + 3))
# under AddressSanitizer its runtime must come first in the preload list
if ldd "$paft" | grep -q libasan; then lib="$(ldd "$paft" | awk '/libasan/ {print $3}'):$lib"; fi
measure() { # STAGE STEPS -> "tp dp" bytes of rank 0
  local dir="$work/$1_$2"; mkdir -p "$dir/count"
  PAFT_MPI_COUNT_DIR="$dir/count" LD_PRELOAD="$lib" mpirun -np 4 -x PAFT_MPI_COUNT_DIR -x LD_PRELOAD \
    "$paft" train "$work/task/task.ini" stage="$1" sft.steps="$2" pref.steps="$2" sft.batch=8 \
    pref.batch=8 sft.micro_batch=2 pref.micro_batch=2 sft.l1=1e-3 parallel.tp=2 \
    output.dir="$dir/out" > "$dir/log" 2>&1 || { cat "$dir/log"; exit 1; }
  awk '{print $1, $2}' "$dir/count/rank0.txt"
}
failed=0 passed=0
for stage in sft dpo; do
  read -r tp2 dp2 < <(measure $stage 2)
  read -r tp3 dp3 < <(measure $stage 3)
  measured="$((tp3 - tp2)) $((dp3 - dp2))"
  computed=$(python3 "$src/analysis/comm_volume.py" --hidden 32 --layers 2 --ffn 64 --heads 4 \
    --kv-heads 2 --vocab 64 --r 4 --tp 2 --dp 2 --batch 8 --micro-batch 2 --seq $T --stage $stage)
  if [ "$measured" = "$computed" ]; then
    passed=$((passed + 1)); echo "$stage: TP and DP bytes per step per rank: measured = computed = $measured"
  else
    failed=$((failed + 1)); echo "FAIL $stage: measured $measured, computed $computed"
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
