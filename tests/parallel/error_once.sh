#!/usr/bin/env bash
# A configuration error that every rank reaches is reported once per job, by rank 0, not once per
# rank (PAFT_FATAL_SHARED, src/util/common.h): the command must fail, print exactly one
# "paft: error:" line, and that line must match REGEX.
#   usage: error_once.sh REGEX [--absent PATH] MPIRUN-ARGS...
#   --absent PATH: the error must come before PATH is written (removed first, checked after): a
#                  check that runs before training, not after it
set -uo pipefail
regex=$1; shift
absent=""
if [ "$1" = "--absent" ]; then absent=$2; shift 2; rm -rf "$absent"; fi
source "$(dirname "$0")/../mpi_env.sh"
out=$(mpirun "$@" 2>&1); rc=$?
printf '%s\n' "$out"
if [ -n "$absent" ] && [ -e "$absent" ]; then echo "FAIL: $absent was written before the error"; exit 1; fi
lines=$(grep -c "paft: error:" <<< "$out")
if [ "$rc" -eq 0 ]; then echo "FAIL: the command succeeded"; exit 1; fi
if [ "$lines" -ne 1 ]; then echo "FAIL: $lines 'paft: error:' lines, expected 1"; exit 1; fi
if ! grep "paft: error:" <<< "$out" | grep -Eq "$regex"; then echo "FAIL: the error does not match '$regex'"; exit 1; fi
echo "one error line, as expected"
