#!/usr/bin/env bash
# start_cluster.sh DIR - a throw-away single-node Slurm cluster on localhost, for tests.
#
# Everything lives under DIR (created, must not exist yet): the munge key and socket, slurm.conf,
# the controller's state, the node's spool, logs and pid files. Three daemons are started in the
# background: munged, slurmctld and slurmd, each recorded in DIR/pids ("name pid" lines) for
# stop_cluster.sh, which kills exactly those. The node declares 4 CPUs whatever the machine has
# (SlurmdParameters=config_overrides), so a 4-task job fits on a 2-core runner; no cgroups, no
# accounting. Ports are picked free, so two clusters (two build trees) can run side by side.
#
# Clients find the cluster through SLURM_CONF:  source DIR/env  (sets SLURM_CONF).
# Needs: munge (munged, mungekey), slurmctld, slurmd, slurm-client (sinfo, sbatch, srun); root.
set -euo pipefail

dir=${1:?usage: start_cluster.sh DIR}
cpus=${PAFT_SLURM_CPUS:-4}

missing=()
for tool in munged slurmctld slurmd sinfo sbatch srun scontrol; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "start_cluster.sh: not installed: ${missing[*]}" >&2
  echo "  (Debian/Ubuntu: apt-get install munge slurmctld slurmd slurm-client)" >&2
  exit 2
fi
export PATH="$PATH:/usr/sbin"
if [ "$(id -u)" != 0 ]; then
  echo "start_cluster.sh: must run as root (the daemons run as SlurmUser=root)" >&2
  exit 2
fi

mkdir "$dir"  # fails if it exists: never reuse another cluster's state
dir=$(cd "$dir" && pwd)
mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
: > "$dir/pids"

# Two free TCP ports (the kernel picks them; a tiny race before the daemons bind them is fine).
read -r ctld_port slurmd_port < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)

# --- munge: a fresh key, its own socket --------------------------------------------------------
socket_path="$dir/munge/munge.socket"
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$dir/munge/munge.key"
chmod 0700 "$dir/munge"
# --force: munged refuses a key and a socket directory outside /etc/munge, /run/munge otherwise.
munged --force --key-file="$dir/munge/munge.key" --socket="$socket_path" \
       --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed" \
       --log-file="$dir/log/munged.log"
# munged daemonizes itself once its socket is ready: its pid file is written by then.
echo "munged $(cat "$dir/munge/munged.pid")" >> "$dir/pids"

# --- slurm.conf --------------------------------------------------------------------------------
cat > "$dir/slurm.conf" <<CONF
ClusterName=paftest
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket_path
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes are tracked through /proc, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Trust the configured CPU count rather than the hardware (4 tasks on a 2-core runner).
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
# Short timers: jobs end and nodes come back in seconds.
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
printf 'export SLURM_CONF=%q\n' "$dir/slurm.conf" > "$dir/env"
export SLURM_CONF="$dir/slurm.conf"

# --- the daemons (in the foreground of a background job: the pid we record is the daemon's) -----
slurmctld -D -c -f "$SLURM_CONF" > "$dir/log/slurmctld.out" 2>&1 &
echo "slurmctld $!" >> "$dir/pids"
slurmd -D -N localhost -f "$SLURM_CONF" > "$dir/log/slurmd.out" 2>&1 &
echo "slurmd $!" >> "$dir/pids"

# --- wait for the node to be idle (seconds) ----------------------------------------------------
for _ in $(seq 1 150); do
  state=$(sinfo -h -N -n localhost -o %t 2>/dev/null || true)
  if [ "$state" = idle ]; then
    echo "slurm cluster up in $dir (controller port $ctld_port, node localhost with $cpus CPUs)"
    exit 0
  fi
  while read -r name pid; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "start_cluster.sh: $name (pid $pid) died; its log:" >&2
      tail -n 20 "$dir/log/$name.log" "$dir/log/$name.out" 2>/dev/null >&2 || true
      exit 1
    fi
  done < "$dir/pids"
  sleep 0.2
done
echo "start_cluster.sh: the node did not become idle in 30 s (state '${state:-none}'); logs:" >&2
tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
exit 1
