#!/usr/bin/env bash
# Occupancy guard for the tensor-core kernels: compiles them with ptxas's resource report for each
# architecture paft builds for and fails when a kernel spills registers, or when its register count
# costs it a block per SM against the table below. Both happen silently otherwise: a change that
# adds two registers to the D = 128 attention forward (168 -> 170) takes it from 3 blocks of 128
# threads per SM to 2, and nothing but a profile on a GPU would show it. No GPU needed.
#   usage: check_registers.sh NVCC SOURCE_DIR [ARCH ...]     (ARCH: 80 90 ...; default 80 90)
set -euo pipefail
nvcc=$1 src=$2
shift 2
archs=()
for a in "$@"; do # CMake's forms: 90, 90-real, 90a-virtual; "native" or "all" mean the defaults
  a=${a%%-*}
  [[ $a =~ ^[0-9]+a?$ ]] && archs+=("$a")
done
[ ${#archs[@]} -gt 0 ] || archs=(80 90)

# kernel (a part of its mangled name), the blocks of 128 threads per SM its registers must allow
# (64 K registers per SM, allocated per warp in units of 256), and why that many
expected='
attention_forward_mma_kernelILi64E          4  shared memory allows 8
attention_forward_mma_kernelILi128E         3  52 KB of shared memory allows 4
attention_backward_kv_mma_kernelILi64E      3  56 KB of shared memory allows 4
attention_backward_kv_mma_kernelILi128E     2  two D-wide fp32 accumulators per thread
attention_backward_q_mma_kernelILi64E       3  55 KB of shared memory allows 4
attention_backward_q_mma_kernelILi128E      2  Q and dout fragments plus a D-wide accumulator
attention_backward_q_from_ds_kernelILi64E   6  37 KB of shared memory allows 6
attention_backward_q_from_ds_kernelILi128E  4  53 KB of shared memory allows 4
thin_weight_grad_kernelILi64E               4  53 KB of shared memory allows 4
thin_weight_grad_kernelILi32E               8  as compiled today
thin_weight_grad_kernelILi16E               8  as compiled today
l1_tile_kernelILi                           3  as compiled today (all four instances)
'

failed=0
for arch in "${archs[@]}"; do
  report=$(mktemp)
  for f in attention_mma thin_gemm_cuda l1_fused_cuda; do
    "$nvcc" -arch=sm_"$arch" -O3 -std=c++17 --resource-usage -c "$src/kernels/$f.cu" \
      -I"$src/kernels" -I"$src/src" -I"$src/src/util" -I"$src/src/ops" -o /dev/null 2>> "$report" ||
      { echo "check_registers: nvcc failed on kernels/$f.cu for sm_$arch"; cat "$report"; exit 1; }
  done
  # one line per kernel: mangled name, spill bytes (stores + loads), registers
  kernels=$(awk '
    /Compiling entry function/ { match($0, /function .[^ ]+/); name = substr($0, RSTART + 10, RLENGTH - 11) }
    /spill stores/ { spill = $5 + $9 }
    /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($i == "Used") regs = $(i + 1);
                              print name, spill, regs }' "$report")
  rm -f "$report"
  [ -n "$kernels" ] || { echo "check_registers: no ptxas report for sm_$arch"; exit 1; }
  while read -r pattern want why; do # a renamed kernel must not leave its row checking nothing
    [ -z "$pattern" ] || grep -q "$pattern" <<< "$kernels" ||
      { echo "FAIL sm_$arch: no kernel matches $pattern (renamed? update the table)"; failed=1; }
  done <<< "$expected"
  while read -r name spill regs; do
    if [ "$spill" != 0 ]; then
      echo "FAIL sm_$arch $name: $spill bytes of spills"; failed=1
    fi
    while read -r pattern want why; do
      [ -n "$pattern" ] && [[ $name == *"$pattern"* ]] || continue
      units=$(( (regs * 32 + 255) / 256 ))
      blocks=$(( 65536 / (units * 256) / 4 ))
      if [ "$blocks" -lt "$want" ]; then
        echo "FAIL sm_$arch $name: $regs registers allow $blocks blocks per SM, expected $want ($why)"
        failed=1
      else
        echo "ok   sm_$arch $pattern: $regs registers, $blocks blocks per SM (want $want)"
      fi
    done <<< "$expected"
  done <<< "$kernels"
done
exit $failed
