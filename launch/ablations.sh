#!/usr/bin/env bash
# Runs every execution mode and the paper's ablations (configs/ablations/)
# on the synthetic dataset at a small scale, measures each run's train step
# with the cost tool (bytes, memory) and the profile tool (compute and
# collective time, a trace in the run's TensorBoard directory), and writes
# the side-by-side report.
#
# Usage: launch/ablations.sh [RUNS_DIR] [REPORT_DIR] [SCALING_DIR]
#   RUNS_DIR     workdirs, one per run (default /tmp/alexnet_jax_ablations)
#   REPORT_DIR   Markdown table and plots (default docs/results/ablations)
#   SCALING_DIR  the scaling study (default docs/results/scaling): every mode
#                projected on H100 nodes and v5e slices (alexnet_jax.tools.plan),
#                and the full-size train step compiled for v5e slices of
#                4-256 chips (needs the tpu extra; each compile takes a
#                minute or two on a small CPU, about 30 minutes in all)
# Environment: STEPS (train steps per run, default 200), PYTHON,
#   TPU_SLICES (default v5e:2x2 to v5e:16x16: 4 to 256 chips),
#   SCALING_ONLY=1 (skip the training runs).
#
# The scale (67x67 inputs, a quarter of the paper's widths, 8 classes) is
# chosen so that the whole set runs in about 25 minutes on a 2-core CPU with
# simulated devices; change SMALL below for anything else.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
runs_dir=${1:-/tmp/alexnet_jax_ablations}
report_dir=${2:-$repo/docs/results/ablations}
steps=${STEPS:-200}
python=${PYTHON:-python}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# configs/demo.py's choices at a smaller scale, as overrides that also turn
# the ImageNet-based ablation configs into synthetic-data runs.
SMALL=(
  --config.dataset=synthetic
  --config.synthetic.num_classes=8
  --config.synthetic.train_per_class=200
  --config.synthetic.val_per_class=25
  --config.input.resize_size=76
  --config.input.shuffle_buffer=2048
  --config.model.input_size=67
  --config.model.num_classes=8
  --config.model.init=he  # N(0, 0.01) stays at ln(8) this narrow.
  --config.batch_size=32
  --config.eval_batch_size=100
  --config.eval_ten_crop=False
  --config.num_train_steps="$steps"
  --config.eval_every_steps=$(( steps / 5 ))
  --config.checkpoint_every_steps="$steps"
  --config.log_every_steps=10
  --config.optimizer.learning_rate=0.02
  --config.optimizer.schedule=step
  --config.optimizer.step_every_epochs=1000
)
TWO_TOWER=(--config.model.conv_features="(12, 32, 48, 48, 32)"
           --config.model.fc_features="(256, 256)")
# The paper's one-GPU baseline at the same scale: one tower, conv1-4 halved
# in total, conv5 and the FC layers as wide as both towers together.
ONE_TOWER=(--config.model.conv_features="(12, 32, 48, 48, 64)"
           --config.model.fc_features="(512, 512)")

# name config [overrides...]
run() {
  local name=$1 config=$2
  shift 2
  local workdir=$runs_dir/$name
  echo "== $name"
  rm -rf "$workdir"
  "$python" -m alexnet_jax.main --config="$repo/$config" \
    --workdir="$workdir" "${SMALL[@]}" "$@" > "$runs_dir/$name.log" 2>&1
  "$python" -m alexnet_jax.tools.cost --config="$repo/$config" \
    --json_out="$workdir/cost.json" "${SMALL[@]}" "$@" \
    > "$workdir/cost.txt" 2>&1
  tail -n 2 "$workdir/cost.txt"
  "$python" -m alexnet_jax.tools.profile --config="$repo/$config" \
    --out="$workdir/tensorboard" --json_out="$workdir/profile.json" \
    "${SMALL[@]}" "$@" > "$workdir/profile.txt" 2>&1
  grep -E '^(step_seconds|exposed_collective_fraction|no per-op) ' \
    "$workdir/profile.txt" || true
}

# The scaling study: mode, then slice; 128 images per chip. A mode that
# cannot run on a slice (hybrid's 1000 classes beyond 8 chips) says why in
# its .txt and is left out of the table.
scaling_dir=${3:-$repo/docs/results/scaling}
compile_on() {  # mode config slice [cost flags...]
  local mode=$1 config=$2 slice=$3 out
  shift 3
  out=$runs_dir/scaling_${mode}_${slice/:/_}
  echo "== $mode on $slice"
  if "$python" -m alexnet_jax.tools.cost --config="$repo/$config" \
      --topology="$slice" --json_out="$out.json" "$@" > "$out.txt" 2>&1; then
    jsons+=("$out.json")
  else
    tail -n 1 "$out.txt"
  fi
}
scaling() {
  local jsons=() slice chips
  compile_on tower configs/two_tower.py v5e:2x2 --devices=2 --batch_size=256
  for slice in ${TPU_SLICES:-v5e:2x2 v5e:2x4 v5e:4x4 v5e:4x8 v5e:8x8 \
                              v5e:8x16 v5e:16x16}; do
    chips=$(( $(tr -dc '0-9x' <<< "${slice#*:}" | tr x '*') ))
    compile_on data configs/data_parallel.py "$slice" \
      --batch_size=$(( 128 * chips ))
    compile_on data_tower configs/data_tower.py "$slice" \
      --batch_size=$(( 128 * chips ))
    compile_on hybrid configs/hybrid.py "$slice" \
      --batch_size=$(( 128 * chips ))
    compile_on hybrid_2d configs/hybrid_2d.py "$slice" \
      --batch_size=$(( 128 * chips ))
  done
  "$python" -m alexnet_jax.tools.report --scaling=h100_sxm8,tpu_v5e \
    --out="$scaling_dir" \
    --cost_json="$(IFS=,; echo "${jsons[*]}")" --intro="$(cat <<INTRO
Made by \`SCALING_ONLY=1 launch/ablations.sh\`: the compiled tables come
from the full-size train step compiled for v5e slices of 4 to 256 chips
(128 images per chip; \`python -m alexnet_jax.tools.cost --topology\`); every
time is \`alexnet_jax.tools.plan\`'s projection. Nothing here ran on a GPU or a
TPU.
INTRO
)"
}

mkdir -p "$runs_dir"
if [[ -n ${SCALING_ONLY:-} ]]; then
  scaling
  exit
fi
run tower configs/two_tower.py "${TWO_TOWER[@]}"
run single configs/single_device.py "${TWO_TOWER[@]}"
run data configs/data_parallel.py "${TWO_TOWER[@]}"
run hybrid configs/hybrid.py --config.model.variant=paper "${TWO_TOWER[@]}"
run data_tower configs/data_tower.py "${TWO_TOWER[@]}"
run half_width_one_tower configs/ablations/half_width_one_tower.py \
  "${ONE_TOWER[@]}"
for ablation in no_dropout no_lrn no_overlap_pool no_pca_lighting tanh; do
  run "$ablation" "configs/ablations/$ablation.py" "${TWO_TOWER[@]}"
done

names=(tower single data hybrid data_tower half_width_one_tower no_dropout
       no_lrn no_overlap_pool no_pca_lighting tanh)
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
"$python" -m alexnet_jax.tools.report "${names[@]/#/$runs_dir/}" \
  --out="$report_dir" --intro="$(cat <<INTRO
Made by \`launch/ablations.sh\` at commit $commit: $steps steps of batch 32 per run, 67x67
inputs, a quarter of the paper's widths, He initialisation, 8 synthetic
classes, on a 2-core CPU where every device is simulated.

What it does not show: speed on real hardware. All devices of a run share
the same two cores and collectives are memory copies, so images/s ranks
nothing (a parallel run cannot beat one device here). Nor the paper's
ablation deltas: those are about a percent on ImageNet after 90 epochs;
here the modes, which compute the same function, already spread by several
points, because float rounding differs between modes and grows over $steps
steps at this learning rate, and 200 validation images give about +-3.5%
of sampling noise. Differences smaller than that spread mean nothing.

What it does show: every mode and ablation trains end to end from the same
data and seeds, and the collective bytes and memory per device are what
each compiled train step moves and holds (\`python -m alexnet_jax.tools.cost\`
gives them at full size and projects step times with --link_gbps and
--device_tflops). The measured table (\`python -m alexnet_jax.tools.profile\`)
splits each step's time into compute and collectives on these simulated
devices, where a collective's time is mostly waiting for the other device;
the same command on a GPU or TPU node measures real overlap.
INTRO
)"
scaling
