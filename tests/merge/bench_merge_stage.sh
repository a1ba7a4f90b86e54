#!/usr/bin/env bash
# bench_merge_stage.sh BUILD_DIR WORKDIR [RANKS ...] - the merge stage on a Llama-3.2-1B-shaped
# model against its I/O floor (not a test; results go to docs/BENCHMARKS.md).
#
# Makes WORKDIR/model (2.5 GB of random bf16 weights) and two r=16 adapters on all seven
# projections once (bench_merge_stage make), then for each rank count (default 1 2 4):
#   floor   bench_merge_stage floor: read every rank's rows of every base tensor and the LoRA
#           factors, round to bf16, write the rows into a chunked parallel-HDF5 file: the I/O a
#           merge cannot avoid
#   merge   paft merge with ties (density 0.5), dare_ties (density 0.5), task_arithmetic, bf16 out
# Each timing is the wall time of the whole mpirun (startup included), best of REPEAT (default 2),
# with the base model in the page cache (it is read once before the first run). Needs ~8 GB disk.
set -euo pipefail
build=$(cd "$1" && pwd) work=$2; shift 2
ranks=("$@"); [ ${#ranks[@]} -eq 0 ] && ranks=(1 2 4)
repeat=${REPEAT:-2}
source "$(dirname "$0")/../mpi_env.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=passive
mkdir -p "$work"
[ -f "$work/pref.h5" ] || "$build/tests/merge/bench_merge_stage" make "$work"
cat >"$work/bench.ini" <<INI
[model]
path = $work/model
[merge]
sft_adapter = $work/sft.h5
pref_adapter = $work/pref.h5
INI
cat "$work/model/model.safetensors" >/dev/null  # warm the page cache

best() {  # best wall time of "$@" over $repeat runs, in seconds
  local b=""
  for _ in $(seq "$repeat"); do
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log"; exit 1; }
    t1=$(date +%s.%N)
    b=$(python3 -c "print(min(float('${b:-1e9}'), $t1 - $t0))")
    rm -f "$work/out.h5"
  done
  printf "%.1f" "$b"
}

echo "ranks  floor_s  ties_s  dare_ties_s  task_arithmetic_s   (threads/rank: $OMP_NUM_THREADS, $(nproc --all) cores)"
for np in "${ranks[@]}"; do
  run=(mpirun -np "$np" --oversubscribe)
  floor=$(best "${run[@]}" "$build/tests/merge/bench_merge_stage" floor "$work" "$work/out.h5")
  ties=$(best "${run[@]}" "$build/paft" merge "$work/bench.ini" merge.out="$work/out.h5" \
         merge.method=ties merge.density=0.5,0.5)
  tail -n 2 "$work/last.log" | sed 's/^/    /'
  dare=$(best "${run[@]}" "$build/paft" merge "$work/bench.ini" merge.out="$work/out.h5" \
         merge.method=dare_ties merge.density=0.5,0.5)
  ta=$(best "${run[@]}" "$build/paft" merge "$work/bench.ini" merge.out="$work/out.h5" \
       merge.method=task_arithmetic)
  printf "%5d  %7s  %6s  %11s  %17s\n" "$np" "$floor" "$ties" "$dare" "$ta"
done
