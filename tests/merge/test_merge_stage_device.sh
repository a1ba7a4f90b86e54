#!/usr/bin/env bash
# test_merge_stage_device.sh PAFT_CPU PAFT_GPU INPUTS WORKDIR - `paft merge` with merge.device=cuda
# (every rank merges its rows on its GPU, kernels/merge_cuda.cu) writes the very file the CPU merge
# writes (`cmp`), on 1 and 2 ranks (the ranks share the GPU), for every method. PAFT_GPU is the real
# paft on a GPU machine, or paft_emu (the CUDA emulator) anywhere. First, merge.device=auto with
# model.device=cuda on PAFT_CPU: its GPU if it sees one, else the CPU with a note, and either way
# the same file; merge.device=cuda without a GPU is an error that leaves no file. Exit 77 (skipped)
# when PAFT_GPU finds no GPU.
set -euo pipefail
paft_cpu=$1 paft_gpu=$2 inputs=$3 work=$4
source "$(dirname "$0")/../mpi_env.sh"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
rm -rf "$work" && mkdir -p "$work" # a file left by an earlier run must not pass for one left now
cases=("llama merge.method=dare_ties merge.density=0.6,0.4 merge.seed=5 merge.dtype=bf16"
       "qwen merge.method=ties merge.density=0.3,0.5 merge.dtype=fp32"
       "llama merge.method=slerp merge.weights=0.3,0.7 merge.dtype=fp32"
       "qwen merge.method=dare_linear merge.density=0.5,0.8 merge.rescale=l1 merge.dtype=fp32"
       "llama merge.method=magnitude merge.density=0.2,0.9 merge.weights=0.6,0.5 merge.dtype=bf16"
       "llama merge.method=task_arithmetic merge.weights=1,0.5 merge.lambda=0.8 merge.dtype=fp32"
       "qwen merge.method=linear merge.weights=2,1 merge.dtype=fp32")
status=0

# auto: a training configuration (model.device=cuda) merges wherever it runs, to the same file
ini=$inputs/llama/merge.ini
mpirun -np 1 "$paft_cpu" merge "$ini" "merge.out=$work/auto-cpu.h5" >"$work/auto-cpu.log" 2>&1 ||
  { cat "$work/auto-cpu.log"; exit 1; }
mpirun -np 1 "$paft_cpu" merge "$ini" model.device=cuda "merge.out=$work/auto.h5" >"$work/auto.log" 2>&1 ||
  { cat "$work/auto.log"; exit 1; }
cmp "$work/auto-cpu.h5" "$work/auto.h5" || { echo "FAIL merge.device=auto: another file"; status=1; }
if grep -q "merging on the CPU" "$work/auto.log"; then
  echo "ok   merge.device=auto without a GPU: merged on the CPU, with a note, the same file"
  # ... and merge.device=cuda there is an error naming what is missing, with no file left
  if mpirun -np 1 "$paft_cpu" merge "$ini" merge.device=cuda "merge.out=$work/refused.h5" \
       >"$work/refused.log" 2>&1; then
    echo "FAIL merge.device=cuda without a GPU succeeded"; status=1
  elif ! grep -qE "no CUDA device is visible|built without the CUDA backend" "$work/refused.log"; then
    echo "FAIL merge.device=cuda without a GPU: unclear message"; cat "$work/refused.log"; status=1
  elif ls "$work"/refused.h5* >/dev/null 2>&1; then
    echo "FAIL merge.device=cuda without a GPU left a file"; status=1
  else
    echo "ok   merge.device=cuda without a GPU: $(grep -o 'error:.*' "$work/refused.log" | head -c 90)..."
  fi
elif grep -q "on cuda" "$work/auto.log"; then
  echo "ok   merge.device=auto with a GPU: merged on it, the same file"
else
  echo "FAIL merge.device=auto: the log says neither where it merged"; cat "$work/auto.log"; status=1
fi

for i in "${!cases[@]}"; do
  read -r set args <<<"${cases[$i]}"
  # shellcheck disable=SC2086
  mpirun -np 1 "$paft_cpu" merge "$inputs/$set/merge.ini" $args "merge.out=$work/case$i-cpu.h5" \
    >"$work/case$i-cpu.log" 2>&1 || { cat "$work/case$i-cpu.log"; exit 1; }
  for np in 1 2; do
    out=$work/case$i-cuda-np$np.h5 log=$work/case$i-cuda-np$np.log
    # shellcheck disable=SC2086
    if ! mpirun -np "$np" --oversubscribe "$paft_gpu" merge "$inputs/$set/merge.ini" $args \
         merge.device=cuda "merge.out=$out" >"$log" 2>&1; then
      if grep -q "no CUDA device is visible" "$log"; then
        echo "SKIPPED: no GPU for $paft_gpu"; [ $status = 0 ] && exit 77; exit $status
      fi
      cat "$log"; exit 1
    fi
    grep -q "merge .* on cuda" "$log" || { echo "FAIL $set $args: the log does not say the merge ran on cuda"; cat "$log"; status=1; }
    if cmp "$work/case$i-cpu.h5" "$out"; then
      echo "ok   $set $args: cuda on $np rank(s) = cpu, bit for bit"
    else
      echo "FAIL $set $args: cuda on $np rank(s) differs from the CPU merge"; status=1
    fi
  done
done
exit $status
