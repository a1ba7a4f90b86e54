#!/usr/bin/env bash
# test_merge_stage_ranks.sh PAFT INPUTS WORKDIR - the merged file is bitwise identical (the whole
# file, `cmp`) for 1, 2, 3 and 4 ranks: DARE (bf16), TIES with a magnitude top-k (fp32, a tied
# 66000-token embedding copied in pieces) and SLERP (whole-tensor dot products).
set -euo pipefail
paft=$1 inputs=$2 work=$3
source "$(dirname "$0")/../mpi_env.sh"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
mkdir -p "$work"
cases=("llama merge.method=dare_ties merge.density=0.6,0.4 merge.seed=5 merge.dtype=bf16"
       "qwen merge.method=ties merge.density=0.3,0.5 merge.dtype=fp32"
       "llama merge.method=slerp merge.weights=0.3,0.7 merge.dtype=fp32")
status=0
for i in "${!cases[@]}"; do
  read -r set args <<<"${cases[$i]}"
  for np in 1 2 3 4; do
    # shellcheck disable=SC2086
    mpirun -np "$np" --oversubscribe "$paft" merge "$inputs/$set/merge.ini" $args \
      "merge.out=$work/case$i-np$np.h5" >"$work/case$i-np$np.log" 2>&1 ||
      { cat "$work/case$i-np$np.log"; exit 1; }
    if [ "$np" -gt 1 ]; then
      if cmp "$work/case$i-np1.h5" "$work/case$i-np$np.h5"; then
        echo "ok   $set $args: $np ranks = 1 rank, bit for bit"
      else
        echo "FAIL $set $args: $np ranks differ from 1 rank"; status=1
      fi
    fi
  done
done
exit $status
