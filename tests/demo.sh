#!/usr/bin/env bash
# The README's first command: install dependencies, build paft, run `paft demo` on 4 MPI ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install_deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DPAFT_BUILD_TESTS=OFF -DPAFT_CUDA=OFF >/dev/null
cmake --build build -j"$(nproc)"
source tests/mpi_env.sh
mpirun -np 4 build/paft demo "${1:-paft-demo}"
