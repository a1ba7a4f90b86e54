#!/usr/bin/env bash
# Everything the GPU machine is for, in one device call (device time is scarce): build with CUDA,
# the CUDA tests (every op, the device model and `paft run` against the CPU backend), then
# `paft bench` on the issue's shapes and the PyTorch + PEFT anchor in the same call. Logs and
# JSON lines go to $OUT; a short table is printed last.
#   usage (device tool): bash tests/bench/gpu_check.sh DEPS [tests|bench|profile|memcheck|all]
#                        bash tests/bench/gpu_check.sh DEPS profile [MODEL:BATCH ...]
#   (a call may run 10 minutes: if `all` does not fit, run `tests`, then `bench` while it is warm;
#   `profile`: the step's device time by phase, `paft bench profile=1`, for each MODEL:BATCH
#   (default mistral-7b:4, the shape issue 7 still misses; llama-1b:8 in a call of its own),
#   against each PAFT_* switch of kernels/README.md and with the L1 term, then the merge's passes
#   on CPU and GPU (bench_merge): 9 short bench runs a model, about three minutes; `memcheck`:
#   compute-sanitizer's memcheck of the op and merge tests)
#   Nsight Compute (ncu) hangs on the lent machine ("Failed to profile nvjet_sm90...") and Nsight
#   Systems is not installed: use `profile`.
#   DEPS: the folder made by tests/bench/fetch_device_deps.sh, named in the call's `carry`.
set -uo pipefail
deps=${1:?usage: gpu_check.sh DEPS [tests|bench|profile|memcheck|all]} what=${2:-all}
out=${OUT:-/tmp/paft-gpu-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

# parallel HDF5 into /opt/h5 (the shared script), cJSON and inih straight into / (pkg-config finds
# them where CMake looks)
. "$deps/setup-device.sh" "$deps" > /dev/null
for f in "$deps"/libcjson*.deb "$deps"/libinih*.deb; do dpkg -x "$f" /; done
command -v pkg-config > /dev/null ||
  for f in "$deps"/pkgconf*.deb "$deps"/libpkgconf*.deb; do dpkg -x "$f" /; done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

start=$(date +%s)
if ! { cmake -S . -B build-gpu -DPAFT_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 &&
       cmake --build build-gpu -j16; } > "$out/build.log" 2>&1; then
  echo "BUILD FAILED"; grep -E "error|Error" "$out/build.log" | head -40; exit 1
fi
echo "build: $(( $(date +%s) - start )) s"

if [ "$what" = profile ]; then
  shift 2
  for run in "${@:-mistral-7b:4}"; do
    set -- ${run/:/ }
    echo "== $1 ${2}x1024"
    build-gpu/paft bench model=$1 batch=$2 seq=1024 device=cuda steps=4 profile=1 2>&1 |
      grep -v '^bench:' | tee "$out/profile_$1.log"
    # what two choices cost or save: one LoRA product per projection, and the logits in chunks
    echo "== $1, PAFT_LORA_FOLDED=0 (the LoRA products apart from the frozen GEMMs)"
    PAFT_LORA_FOLDED=0 build-gpu/paft bench model=$1 batch=$2 seq=1024 device=cuda steps=4 |
      grep '^  step'
    echo "== $1, PAFT_LORA_SHARED_INPUT=0 (and so not folded either)"
    PAFT_LORA_SHARED_INPUT=0 build-gpu/paft bench model=$1 batch=$2 seq=1024 device=cuda steps=4 |
      grep '^  step'
    echo "== $1, PAFT_ATTENTION_STORED_DS=0 (dq recomputes S and dP instead of reading the stored dS)"
    PAFT_ATTENTION_STORED_DS=0 build-gpu/paft bench model=$1 batch=$2 seq=1024 device=cuda steps=4 profile=1 |
      grep -E '^  step|attention'
    echo "== $1, PAFT_ATTENTION_KV_PER_GROUP=1 (dk, dv per KV head over its group, no per-head shares)"
    PAFT_ATTENTION_KV_PER_GROUP=1 build-gpu/paft bench model=$1 batch=$2 seq=1024 device=cuda steps=4 profile=1 |
      grep -E '^  step|attention'
    echo "== $1, PAFT_THIN_WGRAD=1 (the LoRA weight gradients on thin_gemm_cuda.cu, not cuBLASLt)"
    PAFT_THIN_WGRAD=1 build-gpu/paft bench model=$1 batch=$2 seq=1024 device=cuda steps=4 profile=1 |
      grep -E '^  step|LoRA'
    echo "== $1, l1=1e-4 (PAFT's L1 term on every adapted module, in the optimizer phase), fused"
    build-gpu/paft bench model=$1 batch=$2 seq=1024 device=cuda steps=4 l1=1e-4 profile=1 |
      grep -E '^  step|optimizer'
    echo "== $1, l1=1e-4, PAFT_L1_FUSED=0 (delta in memory, cuBLASLt)"
    PAFT_L1_FUSED=0 build-gpu/paft bench model=$1 batch=$2 seq=1024 device=cuda steps=4 l1=1e-4 profile=1 |
      grep -E '^  step|optimizer'
    echo "== $1, logits_chunk=2048"
    build-gpu/paft bench model=$1 batch=$2 seq=1024 device=cuda steps=4 logits_chunk=2048 |
      grep '^  step'
  done
  # the merge's passes on one Mistral-MLP-sized tensor: 16 CPU threads, then the GPU
  echo "== merge, one 4096 x 14336 tensor"
  OMP_NUM_THREADS=16 build-gpu/tests/merge/bench_merge 4096 14336 3 cpu 2>&1 | tee "$out/merge_cpu.log"
  build-gpu/tests/merge/bench_merge 4096 14336 3 cuda 2>&1 | tee "$out/merge_cuda.log"
  exit 0
fi

if [ "$what" = memcheck ]; then # compute-sanitizer's memcheck of the op and merge tests
  /usr/local/cuda/bin/compute-sanitizer --tool memcheck --print-limit 5 \
    build-gpu/tests/cuda/test_ops_cuda > "$out/memcheck.log" 2>&1
  grep -E "ERROR SUMMARY|test_ops_cuda:" "$out/memcheck.log"
  /usr/local/cuda/bin/compute-sanitizer --tool memcheck --print-limit 5 \
    build-gpu/tests/cuda/test_merge_cuda > "$out/memcheck_merge.log" 2>&1
  grep -E "ERROR SUMMARY|test_merge_cuda:" "$out/memcheck_merge.log"
  exit 0
fi

if [ "$what" != bench ]; then
  # '^cuda$': the label is a regular expression, and cuda-emulated (the CPU emulator) is not wanted
  # here; four at a time (they are small, the GPU has room), to stay inside one call's 10 minutes
  (cd build-gpu && ctest -L '^cuda$' -j4 --output-on-failure --timeout 300) > "$out/ctest_cuda.log" 2>&1
  grep -E "tests passed|Failed|Passed|Skipped" "$out/ctest_cuda.log" | tail -20
  # the op-by-op and model comparisons, with their figures
  build-gpu/tests/cuda/test_ops_cuda > "$out/test_ops_cuda.log" 2>&1; tail -5 "$out/test_ops_cuda.log"
fi

if [ "$what" != tests ]; then
  : > "$out/bench.jsonl"
  for run in "llama-1b 8 1024 sft 0" "mistral-7b 4 1024 sft 0" "smollm2-135m 16 1024 sft 0" \
             "llama-1b 4 1024 dpo 0" "mistral-7b 2 1024 dpo 0" "mistral-7b 4 1024 dpo 1"; do
    set -- $run
    build-gpu/paft bench model=$1 batch=$2 seq=$3 stage=$4 recompute=$5 device=cuda steps=10 \
      > "$out/bench_$1_$4_$2x$3.log" 2>&1
    grep '^bench:' "$out/bench_$1_$4_$2x$3.log" | sed 's/^bench: //' >> "$out/bench.jsonl" ||
      { echo "bench $run failed:"; tail -5 "$out/bench_$1_$4_$2x$3.log"; }
  done
  python3 "$deps/peft_bench.py" llama-1b:8:1024 llama-1b:8:1024:compile mistral-7b:4:1024 \
    > "$out/peft_bench.log" 2>&1 || tail -5 "$out/peft_bench.log"
  OUT=$out python3 "$deps/peft_dpo_bench.py" > "$out/peft_dpo_bench.log" 2>&1 || tail -5 "$out/peft_dpo_bench.log"
  echo "== paft (device=cuda)"; cat "$out/bench.jsonl"
  echo "== PyTorch + PEFT anchor"; grep -h '^{' "$out/peft_bench.log" "$out/peft_dpo_bench.log"
fi
