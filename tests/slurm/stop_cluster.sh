#!/usr/bin/env bash
# stop_cluster.sh DIR - stops the daemons start_cluster.sh DIR started (by the pids it recorded,
# nothing else) and removes DIR. Safe to call twice, or on a cluster that only half started.
set -uo pipefail
dir=${1:?usage: stop_cluster.sh DIR}
[ -d "$dir" ] || exit 0
# Jobs still there (a test that failed half-way) are cancelled first, so that no job step
# outlives its slurmd.
if [ -f "$dir/slurm.conf" ]; then
  export SLURM_CONF=$dir/slurm.conf
  jobs=$(timeout 5 squeue -h -o %i 2>/dev/null)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086  # one job id per word
    timeout 5 scancel $jobs 2>/dev/null
    for _ in $(seq 1 100); do
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
fi
if [ -f "$dir/pids" ]; then
  # SIGTERM to all three at once (they exit within a second or two), SIGKILL to any left after 10 s.
  mapfile -t daemons < "$dir/pids"
  for line in "${daemons[@]}"; do kill -TERM "${line#* }" 2>/dev/null; done
  for _ in $(seq 1 100); do
    alive=()
    for line in "${daemons[@]}"; do kill -0 "${line#* }" 2>/dev/null && alive+=("$line"); done
    [ ${#alive[@]} -eq 0 ] && break
    sleep 0.1
  done
  for line in "${alive[@]}"; do
    echo "stop_cluster.sh: ${line% *} (pid ${line#* }) ignored SIGTERM for 10 s: killing it" >&2
    kill -KILL "${line#* }" 2>/dev/null
  done
fi
rm -rf "$dir"
