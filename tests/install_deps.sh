#!/usr/bin/env bash
# Installs what paft needs to build and test on Debian 12 / Ubuntu 22.04+ (run as root, or with
# sudo available). Packages already present are not reinstalled, so a second run takes a second.
#   build:  C compiler, CMake, Open MPI, parallel HDF5 (the openmpi flavour), cJSON, inih,
#           OpenBLAS (its OpenMP flavour: the CPU backend's GEMMs)
#   tests:  a single-node Slurm cluster (munge, slurmctld, slurmd, client tools), and Python
#           packages for the reference checks and analysis/ (numpy, h5py, tokenizers, jinja2, pyarrow,
#           matplotlib)
set -euo pipefail

packages=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libhdf5-openmpi-dev
          hdf5-tools libcjson-dev libinih-dev libopenblas-openmp-dev python3 python3-pip)
if [ "${1:-}" = "--for-tests" ]; then  # the test suite: also a Slurm cluster to submit to
  packages+=(munge slurmctld slurmd slurm-client)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "install_deps: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--for-tests" ]; then
  py_missing=()
  for m in numpy h5py tokenizers jinja2 pyarrow matplotlib; do
    python3 -c "import $m" 2>/dev/null || py_missing+=("$m")
  done
  if ((${#py_missing[@]})); then
    echo "install_deps: pip install ${py_missing[*]}"
    pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@"; }
    # A distribution's own python3 refuses pip (PEP 668): then install beside its packages.
    pip_install "${py_missing[@]}" 2>/dev/null ||
      pip_install --break-system-packages "${py_missing[@]}"
  fi
fi
