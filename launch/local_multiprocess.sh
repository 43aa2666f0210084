#!/usr/bin/env bash
# Starts N processes of alexnet_jax.main on this machine: a real
# multi-controller JAX run over a loopback coordinator, for testing the
# multi-host code paths without a cluster. On a CPU-only machine each process
# simulates config.num_devices / N devices and the processes exchange
# activations and gradients over gloo (TCP).
#
# Usage: launch/local_multiprocess.sh N CONFIG WORKDIR [--config.key=value ...]
# Environment: PORT (coordinator port, default: a free one), PYTHON.
# Each process's output goes to WORKDIR/process_<i>.log; the script exits
# non-zero if any process fails.
set -euo pipefail

if (( $# < 3 )); then
  echo "usage: $0 N CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
num_processes=$1
config=$2
workdir=$3
shift 3
python=${PYTHON:-python}
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$workdir"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

for (( i = 0; i < num_processes; i++ )); do
  PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$python" -m alexnet_jax.main \
    --config="$config" --workdir="$workdir" --distributed \
    --coordinator_address="localhost:$port" \
    --num_processes="$num_processes" --process_id="$i" "$@" \
    > "$workdir/process_$i.log" 2>&1 &
  pids+=("$!")
done

# The first failure stops the rest at once; on their own they would stop
# within --lost_process_timeout seconds (main's watchdog), as on a cluster.
for (( left = num_processes; left > 0; left-- )); do
  if ! wait -n; then
    echo "a process failed; logs in $workdir/process_*.log:" >&2
    tail -n 20 "$workdir"/process_*.log >&2
    exit 1
  fi
done
pids=()
