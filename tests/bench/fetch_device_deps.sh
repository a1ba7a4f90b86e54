#!/usr/bin/env bash
# Prepare DIR (default .device, ignored by git) for tests/bench/gpu_check.sh on the GPU machine:
# the Debian packages it lacks (parallel HDF5, cJSON, inih, pkg-config in case), the shared set-up script and the
# PyTorch + PEFT anchors. Run on this (Debian 12) machine; pass DIR in the device call's `carry`.
#   usage: bash tests/bench/fetch_device_deps.sh [DIR] [SHARED]    (SHARED: default ../shared)
set -euo pipefail
dir=${1:-.device} shared=${2:-../shared}
mkdir -p "$dir"
grep -qx "$dir/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "$dir/" >> .git/info/exclude; }
(cd "$dir" && apt-get download libhdf5-openmpi-103-1 libhdf5-openmpi-dev libsz2 libaec0 \
   libcjson1 libcjson-dev libinih1 libinih-dev pkgconf pkgconf-bin libpkgconf3 2>/dev/null)
cp "$shared/gpu/setup-device.sh" "$shared/bench/peft_bench.py" "$shared/bench/peft_dpo_bench.py" "$dir/"
ls -1 "$dir"
