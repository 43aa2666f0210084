"""Projects the train step of each execution mode onto a GPU cluster.

  python -m alexnet_jax.plan --hardware=owt_k20 --modes=hybrid,data \\
      --devices=1,2,4,8 [--batch_per_device=128 | --global_batch=1024] \\
      [--variant=owt] [--step_seconds=S --step_batch=B] [--out=DIR]

Per mode and device count it prints one line
`plan <mode> <devices> <global_batch> <step_seconds> <images_per_sec>
<speedup>`, then a Markdown table, and writes DIR/plan.md and DIR/plan.png
(speedup against devices, one line per mode). Every figure is a projection.

The model, per device and step:

  compute   the mode's training FLOPs on this device (`cost`), at the rate
            of one device: its measured or published step time, less its
            optimizer update, over its FLOPs. Nothing is fitted to the
            multi-device results the projection is checked against.
  update    the optimizer update, memory-bound: weights, gradients and
            momentum read, weights and momentum written, at HBM bandwidth.
  transfers every collective of the mode (`cost.analytical_terms`, equal to
            the compiled program's, which tests/test_cost.py checks), each
            `steps x latency + received bytes / bandwidth` of its link
            class: within a node (NVLink or PCIe) when its group fits in one
            node, else the network. Ring steps: 2(n-1) for an all-reduce,
            n-1 for an all-gather or reduce-scatter.
  overlap   gradient all-reduces can run under the backward pass (two thirds
            of the compute); what does not fit is exposed. Activation
            exchanges (the tower exchange, the hybrid's FC gathers) and the
            metrics feed the next operation, so they are on the critical
            path.

Step = compute + update + critical transfers + exposed gradient transfers.
Left out: contention between GPUs that share a PCIe switch or a NIC,
hierarchical all-reduce algorithms, small-batch inefficiency of the compute
(per-device batch scales compute linearly), the input pipeline.
"""

import dataclasses
import functools
import math
import os
import sys
from typing import Any

from absl import app
from absl import flags

from alexnet_jax import cli
from alexnet_jax import cost
from alexnet_jax import models
from alexnet_jax import parallel

GRADIENT_TERMS = ('bwd: every gradient', 'bwd: conv gradients',
                  "bwd: this tower's gradients over data",
                  'bwd: FC gradients over data')
BACKWARD_SHARE = 2 / 3  # Weight and input gradients: twice the forward.
UPDATE_TRAFFIC = 5  # Bytes moved per parameter byte: read w, g, v; write w, v.
IMAGENET_TRAIN = 1_281_167


@dataclasses.dataclass(frozen=True)
class Link:
  gbytes_per_s: float  # What one device receives at, each direction.
  latency_s: float  # Per ring step.


@dataclasses.dataclass(frozen=True)
class Hardware:
  """A cluster: one device's speed, its memory, and two link classes."""
  name: str
  devices_per_node: int
  intra: Link
  inter: Link
  hbm_gbytes_per_s: float
  step_seconds: float  # One device's train step, measured or published ...
  step_batch: int  # ... at this batch,
  step_variant: str  # ... for this network.
  sources: str


# One K20 (OWT, arXiv:1404.5997, table 1): 98.05 h for 90 epochs of
# ImageNet at batch 128 on one GPU, the one-tower net.
_K20_STEP = 98.05 * 3600 / (90 * IMAGENET_TRAIN / 128)

# The paper net's train step at batch 128 on one device, from the cost
# model (tests/test_plan.py keeps these equal to it): FLOPs, and parameter
# bytes for the update.
PAPER_STEP_FLOPS = 529_358_143_488
PAPER_PARAM_BYTES = 243_860_896


def _assumed_step(peak_flops: float, share: float,
                  hbm_gbytes_per_s: float) -> float:
  """One device's paper-net step at batch 128, at `share` of its peak."""
  update = UPDATE_TRAFFIC * PAPER_PARAM_BYTES / (hbm_gbytes_per_s * 1e9)
  return PAPER_STEP_FLOPS / (share * peak_flops) + update

HARDWARE = {
    'paper_gtx580': Hardware(
        'paper_gtx580', devices_per_node=2,
        intra=Link(8.0, 10e-6), inter=Link(8.0, 10e-6),
        hbm_gbytes_per_s=192.4,
        # No single-GPU time was published: the K20's published step,
        # scaled by the two GPUs' datasheet single-precision peaks.
        step_seconds=_K20_STEP * 3.52 / 1.581, step_batch=128,
        step_variant='owt',
        sources='GTX 580 datasheet: 1.581 TFLOP/s fp32, 192.4 GB/s; PCIe 2.0 '
        'x16: 8 GB/s each way; one-GPU step: the K20 step (OWT) scaled by '
        'the peak FLOP/s ratio 3.52/1.581 (an assumption, not a '
        'measurement); latency 10 us per transfer (typical PCIe peer copy).'),
    'owt_k20': Hardware(
        'owt_k20', devices_per_node=8,
        intra=Link(8.0, 10e-6), inter=Link(8.0, 10e-6),
        hbm_gbytes_per_s=208.0, step_seconds=_K20_STEP, step_batch=128,
        step_variant='owt',
        sources='Tesla K20 datasheet: 3.52 TFLOP/s fp32, 208 GB/s, PCIe 2.0 '
        'x16 (8 GB/s each way); one-GPU step: OWT (arXiv:1404.5997) 98.05 '
        'h / 90 epochs at batch 128 = 0.392 s; latency 10 us per transfer '
        '(typical PCIe peer copy).'),
    'h100_sxm8': Hardware(
        'h100_sxm8', devices_per_node=8,
        intra=Link(450.0, 5e-6), inter=Link(50.0, 10e-6),
        hbm_gbytes_per_s=3350.0,
        # Not measured yet: an assumed 30% of the dense TF32 peak.
        step_seconds=_assumed_step(495e12, 0.30, 3350.0),
        step_batch=128, step_variant='paper',
        sources='H100 SXM datasheet: 495 TFLOP/s dense TF32, 3.35 TB/s HBM3, '
        'NVLink 4 900 GB/s (450 each way); 400 Gb/s (50 GB/s) ConnectX-7 '
        'per GPU across nodes; one-GPU step: ASSUMED 30% of TF32 peak, no '
        'measurement exists (pass --step_seconds with a measured one); '
        'latency 5 us NVLink, 10 us network per ring step (typical NCCL).'),
    # A slice is one ICI domain (a 2-D torus up to 16x16): hosts are joined
    # by the same links as the chips of one host, so the two classes here
    # are a ring along one torus dimension (the inner mesh axis, within a
    # host) and a collective over both dimensions (every wider group).
    'tpu_v5e': Hardware(
        'tpu_v5e', devices_per_node=4,
        intra=Link(100.0, 1e-6), inter=Link(200.0, 1e-6),
        hbm_gbytes_per_s=819.0,
        # Not measured: an assumed 30% of the bf16 peak (TPUs run float32
        # matmuls and convolutions as bf16 passes at default precision).
        step_seconds=_assumed_step(197e12, 0.30, 819.0),
        step_batch=128, step_variant='paper',
        sources='Cloud TPU v5e system architecture page: 197 TFLOP/s bf16, '
        '819 GB/s HBM2, 400 GB/s bidirectional ICI per chip over 4 ports '
        '(50 GB/s each way per port), 2-D torus up to 256 chips, 4 chips '
        'per host in the slices `jax.experimental.topologies` describes; a '
        'ring along one dimension uses 2 ports (100 GB/s received), a '
        'collective over both dimensions all 4 (200 GB/s); one-chip step: '
        'ASSUMED 30% of the bf16 peak, no measurement exists; latency 1 us '
        'per ring step (assumed; not on the datasheet).'),
}


# `device.device_kind` of a compiled program's devices -> its preset.
PRESET_OF_DEVICE_KIND = {'TPU v5 lite': 'tpu_v5e',
                         'NVIDIA H100 80GB HBM3': 'h100_sxm8'}


def _ring_steps(kind: str, group: int) -> int:
  if group <= 1:
    return 0
  return 2 * (group - 1) if kind == 'all-reduce' else group - 1


def fc_shards(num_devices: int, hw: Hardware) -> int:
  """hybrid_2d's `fc` axis: the devices of one node."""
  return math.gcd(num_devices, hw.devices_per_node)


def _crosses_nodes(mode: str, term: cost.Term, num_devices: int,
                   net: cost.NetShape, hw: Hardware) -> bool:
  """Whether a collective's group spans nodes. The inner mesh axis (tower,
  or hybrid_2d's fc) holds neighbours (`parallel.placement_order`): its
  groups stay in one node; gradient and metric reductions span the mesh."""
  inner = {'data_tower': net.towers,
           'hybrid_2d': fc_shards(num_devices, hw)}.get(mode)
  if (inner and term.group == inner and term.what not in GRADIENT_TERMS
      and not term.what.startswith('metrics')):
    return False
  return num_devices > hw.devices_per_node and term.group > 1


def transfer_seconds(mode: str, term: cost.Term, num_devices: int,
                     net: cost.NetShape, hw: Hardware) -> float:
  link = (hw.inter if _crosses_nodes(mode, term, num_devices, net, hw)
          else hw.intra)
  return (_ring_steps(term.kind, term.group) * link.latency_s * term.count
          + term.bytes / (link.gbytes_per_s * 1e9))


def update_seconds(param_bytes: float, hw: Hardware) -> float:
  return UPDATE_TRAFFIC * param_bytes / (hw.hbm_gbytes_per_s * 1e9)


def flop_rate(hw: Hardware, step_seconds: float, step_batch: int,
              net: cost.NetShape) -> float:
  """FLOP/s of one device, from its single-device step less its update."""
  single = cost.analytical_figures('single', 1, step_batch, net)
  compute = step_seconds - update_seconds(single['param_bytes'], hw)
  if compute <= 0:
    raise ValueError('--step_seconds: shorter than the optimizer update '
                     'alone on this hardware')
  return single['flops'] / compute


def project(mode: str, num_devices: int, batch: int, net: cost.NetShape,
            hw: Hardware, rate: float) -> dict[str, float]:
  """The step of `mode` on `num_devices` at global batch `batch`."""
  if num_devices == 1:
    mode = 'single'
  fc = fc_shards(num_devices, hw)
  figures = cost.analytical_figures(mode, num_devices, batch, net, fc)
  compute = figures['flops'] / rate
  grad, critical = 0.0, 0.0
  for term in cost.analytical_terms(mode, num_devices, batch, net, fc):
    seconds = transfer_seconds(mode, term, num_devices, net, hw)
    if term.what in GRADIENT_TERMS:
      grad += seconds
    else:
      critical += seconds
  exposed = max(0.0, grad - BACKWARD_SHARE * compute)
  update = update_seconds(figures['param_bytes'], hw)
  step = compute + update + critical + exposed
  return {'compute_s': compute, 'update_s': update, 'critical_s': critical,
          'gradient_s': grad, 'exposed_s': exposed, 'step_s': step,
          'images_per_sec': batch / step}


@functools.cache
def variant_net(variant: str) -> cost.NetShape:
  """The cost model's shape of a named network, traced once."""
  return cost.net_shape(models.VARIANTS[variant])


def device_rate(hw: Hardware) -> float:
  """FLOP/s of one device of `hw`, from the preset's one-device step."""
  return flop_rate(hw, hw.step_seconds, hw.step_batch,
                   variant_net(hw.step_variant))


@dataclasses.dataclass(frozen=True)
class Row:
  mode: str
  devices: int
  batch: int
  step_s: float
  images_per_sec: float
  speedup: float
  parts: dict[str, float]


def plan(hw: Hardware, modes: list[str], device_counts: list[int],
         net: cost.NetShape, spec: models.AlexNetSpec, rate: float,
         batch_per_device: int | None = None,
         global_batch: int | None = None) -> tuple[list[Row], list[str]]:
  """Rows for every valid (mode, devices); and why the others were skipped.

  Speedup is over the same network on one device at the same per-device
  batch (with --global_batch: the same global batch).
  """
  rows, skipped = [], []
  for mode in modes:
    for n in device_counts:
      batch = global_batch or batch_per_device * n
      try:
        parallel.validate('single' if n == 1 else mode, n, spec, batch, n,
                          fc_shards(n, hw))
      except ValueError as error:
        skipped.append(f'{mode} on {n}: {error}')
        continue
      one = project('single', 1, batch // n if not global_batch else batch,
                    net, hw, rate)
      got = project(mode, n, batch, net, hw, rate)
      rows.append(Row(mode, n, batch, got['step_s'], got['images_per_sec'],
                      got['images_per_sec'] / one['images_per_sec'], got))
  return rows, skipped


def lines(rows: list[Row]) -> list[str]:
  return [f'plan {r.mode} {r.devices} {r.batch} {r.step_s:.6f} '
          f'{r.images_per_sec:.1f} {r.speedup:.3f}' for r in rows]


def markdown(rows: list[Row], hw: Hardware) -> str:
  out = [f'Projected on `{hw.name}` (a projection, not a measurement). '
         f'Sources: {hw.sources}', '',
         '| mode | devices | global batch | step ms | images/s | speedup | '
         'compute ms | update ms | critical comm ms | gradient comm ms '
         '(exposed) |', '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    p = r.parts
    out.append(f'| {r.mode} | {r.devices} | {r.batch} | {r.step_s * 1e3:.1f} '
               f'| {r.images_per_sec:,.0f} | {r.speedup:.2f} | '
               f'{p["compute_s"] * 1e3:.1f} | {p["update_s"] * 1e3:.1f} | '
               f'{p["critical_s"] * 1e3:.1f} | {p["gradient_s"] * 1e3:.1f} '
               f'({p["exposed_s"] * 1e3:.1f}) |')
  return '\n'.join(out)


def plot_by_mode(rows: list[Row], path: str, *, value: str, ylabel: str,
                 title: str, ideal: bool = False) -> None:
  """`value` of each row against devices on log axes, one line per mode
  (and the ideal, y = devices, for speedups)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4.5))
  counts = sorted({r.devices for r in rows})
  if ideal:
    ax.plot(counts, counts, color='0.7', linestyle='--', label='ideal')
  for mode in dict.fromkeys(r.mode for r in rows):
    points = [(r.devices, getattr(r, value)) for r in rows if r.mode == mode]
    ax.plot(*zip(*points), marker='o', label=mode)
  ax.set(xscale='log', yscale='log', xlabel='devices', ylabel=ylabel,
         title=title)
  ax.set_xticks(counts, [str(c) for c in counts])
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot(rows: list[Row], hw: Hardware, path: str) -> None:
  """Speedup against devices, one line per mode, and the ideal."""
  plot_by_mode(rows, path, value='speedup',
               ylabel='speedup over one device (projected)',
               title=f'{hw.name}: projected speedup', ideal=True)


def _ints(text: str, name: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(',') if v.strip()]
  except ValueError:
    raise ValueError(f'--{name}: not a comma-separated list of integers: '
                     f'{text!r}') from None
  if not values or min(values) < 1:
    raise ValueError(f'--{name}: needs positive integers, got {text!r}')
  return values


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.plan`."""
  return {
      'hardware': flags.DEFINE_enum('hardware', None, sorted(HARDWARE),
                                    'Hardware preset.'),
      'modes': flags.DEFINE_string('modes', 'data,tower,data_tower,hybrid',
                                   'Comma-separated execution modes.'),
      'devices': flags.DEFINE_string('devices', '1,2,4,8',
                                     'Comma-separated device counts.'),
      'batch_per_device': flags.DEFINE_integer(
          'batch_per_device', 128, 'Images per device per step.'),
      'global_batch': flags.DEFINE_integer(
          'global_batch', None, 'A fixed global batch instead.'),
      'variant': flags.DEFINE_enum(
          'variant', None, sorted(models.VARIANTS),
          "Network (default: the preset's single-device measurement's)."),
      'step_seconds': flags.DEFINE_float(
          'step_seconds', None, "One device's measured train step, "
          "replacing the preset's; with --step_batch and --variant."),
      'step_batch': flags.DEFINE_integer(
          'step_batch', None, 'The batch of --step_seconds.'),
      'out': flags.DEFINE_string(
          'out', None, 'Write plan.md and plan.png into this directory.'),
  }


def main(argv, flag: dict[str, Any]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cost.jax_on_cpu()  # Shapes only; no device is used.
  hw = HARDWARE[flag['hardware'].value]
  if flag['step_seconds'].value:
    hw = dataclasses.replace(
        hw, step_seconds=flag['step_seconds'].value,
        step_batch=flag['step_batch'].value or hw.step_batch,
        step_variant=flag['variant'].value or hw.step_variant,
        sources=hw.sources + f' Overridden: one-device step '
        f'{flag["step_seconds"].value} s (--step_seconds).')
  spec = models.VARIANTS[flag['variant'].value or hw.step_variant]
  modes = [m for m in flag['modes'].value.split(',') if m]
  for mode in modes:
    if mode not in parallel.MODES:
      raise ValueError(f'--modes: unknown {mode!r}; choose from '
                       f'{parallel.MODES}')
  counts = _ints(flag['devices'].value, 'devices')
  rows, skipped = plan(hw, modes, counts, cost.net_shape(spec), spec,
                       device_rate(hw),
                       flag['batch_per_device'].value,
                       flag['global_batch'].value)
  for reason in skipped:
    print(f'skipped: {reason}', file=sys.stderr)
  if not rows:
    raise ValueError('no valid (mode, devices) pair to project')
  print('\n'.join(lines(rows)))
  text = markdown(rows, hw)
  print('\n' + text)
  if flag['out'].value:
    os.makedirs(flag['out'].value, exist_ok=True)
    with open(os.path.join(flag['out'].value, 'plan.md'), 'w') as f:
      f.write(text + '\n\n![speedup](plan.png)\n')
    plot(rows, hw, os.path.join(flag['out'].value, 'plan.png'))


if __name__ == '__main__':
  cli.run(main, define_flags, required=['hardware'])
