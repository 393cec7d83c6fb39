#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine for the tests (root, Debian).
# Installs slurm-wlm's daemons and munge when missing, writes a minimal slurm.conf with two
# partitions (cpu, gpu) on this host and a fake GPU GRES so GPU requests schedule without a card,
# starts munged, slurmctld and slurmd in the background and waits until the node is idle.
# Prints the PIDs file; tests/slurm/stop.sh stops the daemons. See shared/design/SLURM.md.
set -euo pipefail
STATE=${SLURM_TEST_STATE:-/tmp/diffmem-slurm}
mkdir -p "$STATE"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge /etc/slurm \
  /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=diffmemtest
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
DefMemPerCPU=1000
GresTypes=gpu
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=${HOST} MaxTime=INFINITE State=UP
CONF
echo "NodeName=${HOST} Name=gpu Count=1 File=/dev/null" > /etc/slurm/gres.conf

: > "$STATE/pids"
su -s /bin/sh munge -c "munged -F" >"$STATE/munged.log" 2>&1 &
echo $! >> "$STATE/pids"
for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
slurmctld -D >"$STATE/slurmctld.log" 2>&1 &
echo $! >> "$STATE/pids"
sleep 1
slurmd -D >"$STATE/slurmd.log" 2>&1 &
echo $! >> "$STATE/pids"

for _ in $(seq 60); do
  if sinfo -h -o "%T" 2>/dev/null | grep -qx idle; then
    echo "$STATE/pids"
    exit 0
  fi
  sleep 0.5
done
echo "SLURM node did not become idle:" >&2
sinfo >&2 || true
tail -5 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
exit 1
