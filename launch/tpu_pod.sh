#!/usr/bin/env bash
# Trains on every worker of a Cloud TPU VM slice (multi-host): the same
# command runs on all workers, and jax.distributed.initialize() finds the
# coordinator, the process count and this worker's id from the TPU metadata.
#
# Usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
# Environment: REPO_DIR (where the repository is checked out on every
# worker, default ~/alexnet_jax), PROJECT (gcloud project; default: gcloud's).
#
# WORKDIR must be shared by all workers (a gs:// bucket, or a filesystem
# mounted on every worker): each worker writes its shards of every
# checkpoint there; main fails at start-up if a worker cannot see it.
# Install first on all workers, e.g.:
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=all \
#     --command='pip install "jax[tpu]" && pip install -e ~/alexnet_jax'
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
project=()
if [[ -n ${PROJECT:-} ]]; then
  project=(--project="$PROJECT")
fi

# Quote every argument for the remote shell.
remote_args=$(printf ' %q' --config="$config" --workdir="$workdir" \
  --distributed "$@")
gcloud compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" "${project[@]}" \
  --worker=all \
  --command="cd $repo_dir && python3 -m alexnet_jax.main$remote_args"
