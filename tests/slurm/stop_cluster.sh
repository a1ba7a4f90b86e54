#!/usr/bin/env bash
# stop_cluster.sh DIR - stops the daemons start_cluster.sh DIR started (by the pids it recorded,
# nothing else) and removes DIR. Safe to call twice, or on a cluster that only half started.
set -uo pipefail
dir=${1:?usage: stop_cluster.sh DIR}
[ -d "$dir" ] || exit 0
if [ -f "$dir/pids" ]; then
  # Reverse order: the node daemon first, munge last (the others authenticate through it).
  tac "$dir/pids" | while read -r name pid; do
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "stop_cluster.sh: $name (pid $pid) ignored SIGTERM for 5 s: killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
fi
rm -rf "$dir"
