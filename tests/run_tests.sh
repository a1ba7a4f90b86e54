#!/usr/bin/env bash
# The README's second command: install dependencies, build paft with warnings as errors, run the
# whole test suite (ctest), then build again with AddressSanitizer + UBSan and run every test but
# the end-to-end runs labelled "slow" (training to convergence, the Slurm cluster, the demo): the
# unit tests, every bad-input test and the MPI tests run under the sanitizers.
#   PAFT_SKIP_SANITIZE=1  skips the sanitizer pass (quicker local iterations)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install_deps.sh --for-tests
source tests/mpi_env.sh
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DPAFT_WERROR=ON -DPAFT_BUILD_TESTS=ON -DPAFT_CUDA=AUTO >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")

if [ "${PAFT_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== again under AddressSanitizer + UndefinedBehaviorSanitizer"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPAFT_SANITIZE=ON -DPAFT_WERROR=ON \
    -DPAFT_BUILD_TESTS=ON -DPAFT_CUDA=AUTO >/dev/null
  cmake --build build-asan -j"$jobs"
  # Open MPI's own allocations are reported as leaks at exit; they are not paft's.
  (cd build-asan && ASAN_OPTIONS=detect_leaks=0 ctest --output-on-failure -j"$jobs" -LE slow)
fi
