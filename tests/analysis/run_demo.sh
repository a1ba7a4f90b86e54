#!/usr/bin/env bash
# The analysis tests' fixture: `paft demo` on 4 MPI ranks into a fresh folder of the build tree,
# as the README runs it (the scripts under analysis/ are then tested on its real output).
#   usage: run_demo.sh MPIEXEC PAFT OUTDIR
set -euo pipefail
mpiexec=$1 paft=$2 out=$3
source "$(dirname "$0")/../mpi_env.sh"
# The demo skips stages already complete in OUTDIR: start from nothing so every file is this build's.
rm -rf "$out"
OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive "$mpiexec" -np 4 "$paft" demo "$out"
test -s "$out/results.json"
