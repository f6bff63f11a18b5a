#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (controller + daemon + munge), from Debian's packages,
# for tests/test_sweep.py::test_slurm_daemon_runs_the_smoke_sweep. Needs root (or sudo) and apt.
#
#   tests/scripts/slurm_localhost.sh start   # install if needed, configure, start; waits for an idle node
#   tests/scripts/slurm_localhost.sh stop    # stop the three daemons (by their pid files)
#
# Measured on Debian 12 (slurm-wlm 22.05.8), 2 cores: install 7 s, start to an idle node 4 s.
# No slurmdbd: accounting is off, so submitit's sacct calls print warnings ("Slurm accounting storage
# is disabled"); submitit then reads job results from their pickles, which is all a sweep needs.
set -euo pipefail
CONF=/etc/slurm/slurm.conf
MARK="# basisprune single-node test cluster"
SUDO=$([ "$(id -u)" = 0 ] && echo || echo "sudo -n")

start() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    $SUDO apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
      || { $SUDO apt-get update -q >/dev/null && \
           $SUDO apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
  fi
  if [ -e "$CONF" ] && ! grep -q "$MARK" "$CONF"; then
    echo "$CONF exists and is not ours; not touching it" >&2; exit 1
  fi
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))  # MB; half, other work shares it
  $SUDO mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /run/slurm
  $SUDO chown munge:munge /run/munge
  # No cgroups (containers often lack them): linuxproc tracking, no task plugin.
  $SUDO tee "$CONF" >/dev/null <<EOF
$MARK
ClusterName=basisprune
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  running /run/munge/munged.pid || $SUDO su -s /bin/sh munge -c /usr/sbin/munged
  running /run/slurm/slurmctld.pid || $SUDO slurmctld
  running /run/slurm/slurmd.pid || $SUDO slurmd
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then sinfo; return 0; fi
    sleep 1
  done
  echo "no idle Slurm node after 60 s; see /var/log/slurm/" >&2; exit 1
}

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
  for f in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/munge/munged.pid; do
    if running "$f"; then $SUDO kill "$(cat "$f")"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
