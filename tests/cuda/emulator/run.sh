#!/usr/bin/env bash
# Runs the fused attention and fill_normal kernels (kernels/attention_cuda.cu, init_cuda.cu) on the
# CPU emulator: no GPU needed. Needs g++ (C++20), mpicc and a CMake build of paft (for
# libpaft_core.a: the CPU ops and paft_fatal).
#   tests/cuda/emulator/run.sh [BUILD_DIR]          kernels vs the CPU ops, three thread orders
#                                                   (about 15 s; add BIG=1 for D = 256 and T = 130)
#   tests/cuda/emulator/run.sh --tests [BUILD_DIR]  also test_ops_cuda.c's fused-attention and
#                                                   fill_normal tests under ASan + UBSan (minutes)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
tests=0
if [[ "${1:-}" == "--tests" ]]; then tests=1; shift; fi
build="$(cd "${1:-$root/build}" && pwd)"
[[ -f "$build/libpaft_core.a" ]] || { echo "run.sh: no $build/libpaft_core.a (build paft first)" >&2; exit 1; }
work="$build/cuda_emulator"
mkdir -p "$work"

# kernel<<<grid, block, smem>>>(args)  ->  emu_launch(kernel, grid, block, smem)(args)
for f in attention init; do
    sed -E 's/([A-Za-z_][A-Za-z_0-9]*(<[A-Za-z_0-9]*>)?)<<<(.*)>>>\(/emu_launch(\1, \3)(/' \
        "$root/kernels/${f}_cuda.cu" > "$work/gen_$f.cu"
    if grep -q '<<<' "$work/gen_$f.cu"; then echo "run.sh: a launch in ${f}_cuda.cu was not rewritten" >&2; exit 1; fi
done

inc=(-I"$here/shim" -I"$work" -I"$root/kernels" -I"$root/src" -I"$root/tests")
cxx=(g++ -std=c++20 -pthread -Wall -Wextra -Wno-unknown-pragmas -Wno-unused-function)
mpi_link=$(mpicc -showme:link)

gcc -O2 -c -I"$root/src" "$root/src/ops/ops_cpu.c" -o "$work/ops_cpu.o"
"${cxx[@]}" -O2 -g "${inc[@]}" "$here/check_fused_attention.cpp" "$work/ops_cpu.o" \
    "$build/libpaft_core.a" $mpi_link -lm -o "$work/check_fused_attention"
"$work/check_fused_attention" ${BIG:+big}

if [[ $tests == 1 ]]; then
    san=(-fsanitize=address,undefined -fno-omit-frame-pointer -O1 -g)
    gcc "${san[@]}" -c -I"$root/src" "$root/src/ops/ops_cpu.c" -o "$work/ops_cpu_san.o"
    "${cxx[@]}" "${san[@]}" "${inc[@]}" -c "$here/kernels_on_host.cpp" -o "$work/kernels_on_host.o"
    gcc "${san[@]}" -Wno-unused-function "${inc[@]}" -c "$here/test_ops_cuda_fused.c" -o "$work/test_ops_cuda_fused.o"
    # every other ops_cuda.h function test_ops_cuda.c calls: a stub that aborts (never called)
    { echo '#include <stdlib.h>'
      comm -23 <(nm -u "$work/test_ops_cuda_fused.o" | awk '{print $2}' | grep -E 'cuda' | sort -u) \
               <(nm --defined-only "$work/kernels_on_host.o" | awk '$2 == "T" {print $3}' | sort -u) |
          sed 's/.*/void &(void) { abort(); }/'; } > "$work/stubs.c"
    gcc -c "$work/stubs.c" -o "$work/stubs.o"
    g++ "${san[@]}" -pthread "$work/test_ops_cuda_fused.o" "$work/kernels_on_host.o" "$work/ops_cpu_san.o" \
        "$work/stubs.o" "$build/libpaft_core.a" $mpi_link -lm -o "$work/test_ops_cuda_fused"
    ASAN_OPTIONS=detect_leaks=1 "$work/test_ops_cuda_fused"
fi
