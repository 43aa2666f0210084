#!/usr/bin/env bash
# The storage figures of docs/performance.md: how long a checkpoint save
# stalls the train loop, and the input rate from prepared shards, on local
# disk and in a bucket of the GCS emulator (tests/gcs_emulator.py) on
# loopback. Needs the test extra (the emulator). The emulator keeps objects
# in memory and adds a TLS proxy for TensorFlow's client, so its figures
# bound what the code costs over a bucket, not what Cloud Storage costs.
#
# Usage: launch/benchmark_storage.sh [CONFIG] [IMAGES]
#   (default configs/demo.py and 2000 ImageNet-sized JPEGs)
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/demo.py}
images=${2:-2000}
work=$(mktemp -d)
trap 'kill "$emulator" 2>/dev/null || true; rm -rf "$work"' EXIT

PYTHONPATH=$PWD python -m tests.gcs_emulator --bucket=bench >"$work/env" &
emulator=$!
until grep -q '^# bucket' "$work/env" 2>/dev/null; do
  kill -0 "$emulator" || { echo "the emulator did not start" >&2; exit 1; }
  sleep 0.2
done
# shellcheck disable=SC1091
source <(grep '^export ' "$work/env")

for location in "$work/local" gs://bench/ckpt; do
  echo "== checkpoint saves into $location"
  python -m alexnet_jax.tools.benchmark_checkpoint --config="$config" \
    --location="$location"
done
for prepared in "$work/prepared" gs://bench/prepared; do
  echo "== prepared shards read from $prepared"
  python -m alexnet_jax.tools.benchmark_input --config="$config" \
    --imagenet_like="$images" --prepare --data_dir="$work/raw" \
    --prepared_dir="$prepared" --batches=40
done
