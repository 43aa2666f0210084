#!/usr/bin/env bash
# Starts a one-node SLURM cluster on this machine: one slurmctld and one
# slurmd, with munge for authentication, so that launch/slurm_gpu.sbatch and
# tests/test_slurm.py run under a real scheduler without a cluster.
#
# Usage (as root): launch/slurm_local_cluster.sh
# Installs Debian's slurm-wlm and munge with apt where they are missing,
# writes /etc/slurm/slurm.conf and cgroup.conf for this host (one node named
# `hostname -s` at 127.0.0.1 with all `nproc` CPUs, partition `local`, jobs
# share CPUs), starts the daemons that are not running and waits until the
# node is up. Running it again reuses a running cluster. Logs:
# /var/log/slurm/. The last line of output says what is running.
set -euo pipefail

readonly MARKER='# Written by alexnet_jax launch/slurm_local_cluster.sh'
readonly CONF_DIR=/etc/slurm
readonly LOG_DIR=/var/log/slurm
readonly PARTITION=local

fail() {
  echo "error: $*" >&2
  exit 1
}

node_state() {
  sinfo -h -p "$PARTITION" -n "$node" -o %T 2>/dev/null | head -n 1 || true
}

node_up() {
  case "$(node_state)" in
    idle|mixed|allocated|completing) return 0 ;;
    *) return 1 ;;
  esac
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
      && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null \
    || fail "SLURM is not installed and there is no apt-get to install it"
  echo "installing slurm-wlm and munge with apt..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_file() {  # PATH CONTENT; leaves alone a file this script did not write.
  if [[ -e $1 ]] && ! grep -qxF "$MARKER" "$1"; then
    fail "$1 was not written by this script; not replacing another cluster's configuration"
  fi
  printf '%s\n%s\n' "$MARKER" "$2" > "$1"
}

write_config() {
  local cpus memory_mb
  cpus=$(nproc)
  memory_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
  mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
  write_file "$CONF_DIR/slurm.conf" "\
ClusterName=alexnet_jax
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MailProg=/bin/true
# Seconds between a job's SIGTERM and its SIGKILL (scancel, time limit).
KillWait=30
# Finished jobs stay visible (squeue -t all, scontrol requeue) for 10 min.
MinJobAge=600
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES DefaultTime=30 MaxTime=120 OverSubscribe=FORCE State=UP"
  write_file "$CONF_DIR/cgroup.conf" "CgroupPlugin=cgroup/v1"
}

running() {  # PIDFILE
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

start_munge() {
  local dir
  for dir in /run/munge /var/log/munge /var/lib/munge /etc/munge; do
    mkdir -p "$dir"
    chown munge:munge "$dir"
  done
  chmod 0700 /etc/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if ! running /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
  fi
  munge -n | unmunge >/dev/null \
    || fail "munged does not answer; see /var/log/munge/munged.log"
}

start_slurm() {
  running /run/slurmctld.pid || slurmctld
  running /run/slurmd.pid || slurmd
  local waited=0
  until node_up; do
    case "$(node_state)" in
      down*|drain*|fail*) scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
    esac
    (( waited++ < 60 )) \
      || fail "node $node is not up after 60 s (state: '$(node_state)'); see $LOG_DIR/"
    sleep 1
  done
}

status() {
  echo "node $node $(node_state), partition $PARTITION," \
    "$(sinfo -h -n "$node" -o %c) CPUs, $(sinfo -V)"
}

main() {
  local start=$SECONDS
  node=$(hostname -s)
  if command -v sinfo >/dev/null && node_up; then
    echo "SLURM cluster already running: $(status)"
    return
  fi
  (( EUID == 0 )) || fail "starting a SLURM cluster needs root (apt, munged, slurmd)"
  install_packages
  write_config
  start_munge
  start_slurm
  echo "SLURM cluster up in $(( SECONDS - start )) s: $(status)"
}

main "$@"
