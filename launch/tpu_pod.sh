#!/usr/bin/env bash
# Trains on every worker of a Cloud TPU VM slice (multi-host): the same
# command runs on all workers, and jax.distributed.initialize() finds the
# coordinator, the process count and this worker's id from the TPU metadata.
#
# Usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
# Environment: REPO_DIR (where the repository is checked out on every
# worker, default ~/alexnet_jax), LOG_DIR (per-worker logs, see below),
# PROJECT (gcloud project; default: gcloud's).
#
# WORKDIR must be shared by all workers (a gs:// bucket, or a filesystem
# mounted on every worker): each worker writes its shards of every
# checkpoint there; main fails at start-up if a worker cannot see it.
# Install first on all workers, with the tested TPU runtime:
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=all \
#     --command="pip install -e ~/alexnet_jax'[tpu]'"
# Check the mesh before paying for the slice, on any machine:
#   python -m alexnet_jax.main --config=CONFIG --dry_run --topology=v5e:4x4
#
# The command returns once every worker has started. Each worker runs under
# nohup with its output in LOG_DIR/worker_<id>.log on that worker (default
# /tmp/alexnet_jax_logs), so a dropped ssh connection neither kills the run
# nor loses its log. Follow one with
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=0 \
#     --command='tail -f /tmp/alexnet_jax_logs/worker_*.log'
#
# Stops: SIGTERM to any worker (a maintenance event, a preemption notice)
# makes all workers save one common step and exit 0; a worker that dies
# stops the others within --lost_process_timeout seconds (default 30; pass
# it after WORKDIR), each ending its log with one line naming the lost
# worker and the checkpoint to resume from. To resume, run the same command
# again: every worker resumes from WORKDIR's latest checkpoint. A worker
# whose previous run is still alive (LOG_DIR/worker_<id>.pid) refuses to
# start a second one.
set -euo pipefail

if (( $# < 4 )); then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
tpu_name=$1
zone=$2
config=$3
workdir=$4
shift 4
repo_dir=${REPO_DIR:-'~/alexnet_jax'}
log_dir=${LOG_DIR:-/tmp/alexnet_jax_logs}
project=()
if [[ -n ${PROJECT:-} ]]; then
  project=(--project="$PROJECT")
fi

# Quote every argument for the remote shell. The worker id comes from the
# TPU metadata server, as jax.distributed.initialize() reads it.
remote_args=$(printf ' %q' --config="$config" --workdir="$workdir" \
  --distributed "$@")
metadata=http://metadata.google.internal/computeMetadata/v1/instance/attributes
worker="w=\$(curl -s -H Metadata-Flavor:Google $metadata/agent-worker-number)"
pid_file="$log_dir/worker_\$w.pid"
gcloud compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" "${project[@]}" \
  --worker=all \
  --command="$worker && mkdir -p $log_dir && cd $repo_dir && \
if [[ -f $pid_file ]] && kill -0 \$(cat $pid_file) 2>/dev/null; then \
echo \"error: worker \$w still runs pid \$(cat $pid_file); stop it first\" >&2; \
exit 1; fi; nohup python3 -m alexnet_jax.main$remote_args \
> $log_dir/worker_\$w.log 2>&1 < /dev/null & echo \$! > $pid_file"
