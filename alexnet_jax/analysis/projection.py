"""Projects the train step of each execution mode onto a cluster.

The model, per device and step:

  compute   the mode's training FLOPs on this device (`comms`), at the rate
            of one device: its measured or published step time, less its
            optimizer update, over its FLOPs. Nothing is fitted to the
            multi-device results the projection is checked against.
  update    the optimizer update, memory-bound: weights, gradients and
            momentum read, weights and momentum written, at HBM bandwidth.
  transfers every collective of the mode (`comms.analytical_terms`, equal to
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

`project_compiled` does the same for a program compiled for GPU nodes
(`analysis.compiled`): its own FLOPs, parameter bytes and collectives, each
collective on the link its replica groups span (NVLink within a host, the
network across hosts); its all-reduces count as gradients (the few small
others: the metrics, the hybrids' logits gradient), every other collective
as critical.
Left out: contention between GPUs that share a PCIe switch or a NIC,
hierarchical all-reduce algorithms, small-batch inefficiency of the compute
(per-device batch scales compute linearly), the input pipeline.
"""

import dataclasses
import functools
import math
from typing import Any

from alexnet_jax import hardware
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax.analysis import comms

GRADIENT_TERMS = ('bwd: every gradient', 'bwd: conv gradients',
                  "bwd: this tower's gradients over data",
                  'bwd: FC gradients over data')


BACKWARD_SHARE = 2 / 3  # Weight and input gradients: twice the forward.


def _ring_steps(kind: str, group: int) -> int:
  if group <= 1:
    return 0
  return 2 * (group - 1) if kind == 'all-reduce' else group - 1


def fc_shards(num_devices: int, hw: hardware.Hardware) -> int:
  """hybrid_2d's `fc` axis: the devices of one node."""
  return math.gcd(num_devices, hw.devices_per_node)


def _crosses_nodes(mode: str, term: comms.Term, num_devices: int,
                   net: comms.NetShape, hw: hardware.Hardware) -> bool:
  """Whether a collective's group spans nodes. The inner mesh axis (tower,
  or hybrid_2d's fc) holds neighbours (`parallel.placement_order`): its
  groups stay in one node; gradient and metric reductions span the mesh."""
  inner = {'data_tower': net.towers,
           'hybrid_2d': fc_shards(num_devices, hw)}.get(mode)
  if (inner and term.group == inner and term.what not in GRADIENT_TERMS
      and not term.what.startswith('metrics')):
    return False
  return num_devices > hw.devices_per_node and term.group > 1


def transfer_seconds(mode: str, term: comms.Term, num_devices: int,
                     net: comms.NetShape, hw: hardware.Hardware) -> float:
  link = (hw.inter if _crosses_nodes(mode, term, num_devices, net, hw)
          else hw.intra)
  return (_ring_steps(term.kind, term.group) * link.latency_s * term.count
          + term.bytes / (link.gbytes_per_s * 1e9))


def update_seconds(param_bytes: float, hw: hardware.Hardware) -> float:
  return hardware.UPDATE_TRAFFIC * param_bytes / (hw.hbm_gbytes_per_s * 1e9)


def flop_rate(hw: hardware.Hardware, step_seconds: float, step_batch: int,
              net: comms.NetShape) -> float:
  """FLOP/s of one device, from its single-device step less its update."""
  single = comms.analytical_figures('single', 1, step_batch, net)
  compute = step_seconds - update_seconds(single['param_bytes'], hw)
  if compute <= 0:
    raise ValueError('--step_seconds: shorter than the optimizer update '
                     'alone on this hardware')
  return single['flops'] / compute


def project(mode: str, num_devices: int, batch: int, net: comms.NetShape,
            hw: hardware.Hardware, rate: float) -> dict[str, float]:
  """The step of `mode` on `num_devices` at global batch `batch`."""
  if num_devices == 1:
    mode = 'single'
  fc = fc_shards(num_devices, hw)
  figures = comms.analytical_figures(mode, num_devices, batch, net, fc)
  compute = figures['flops'] / rate
  grad, critical = 0.0, 0.0
  for term in comms.analytical_terms(mode, num_devices, batch, net, fc):
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


def project_compiled(flops: float, param_bytes: float,
                     collectives: list[dict[str, Any]], batch: int,
                     hw: hardware.Hardware, rate: float) -> dict[str, float]:
  """The step of a compiled program on `hw`: `collectives` as
  `placement.collective_placement` lists them (received bytes, group,
  hosts spanned)."""
  compute = flops / rate
  grad, critical = 0.0, 0.0
  for c in collectives:
    link = hw.inter if c['hosts'] > 1 else hw.intra
    seconds = (_ring_steps(c['kind'], c['group']) * link.latency_s
               + c['bytes'] / (link.gbytes_per_s * 1e9))
    if c['kind'] == 'all-reduce':
      grad += seconds
    else:
      critical += seconds
  exposed = max(0.0, grad - BACKWARD_SHARE * compute)
  update = update_seconds(param_bytes, hw)
  step = compute + update + critical + exposed
  return {'compute_s': compute, 'update_s': update, 'critical_s': critical,
          'gradient_s': grad, 'exposed_s': exposed, 'step_s': step,
          'images_per_sec': batch / step}


@functools.cache
def variant_net(variant: str) -> comms.NetShape:
  """The cost model's shape of a named network, traced once."""
  return comms.net_shape(models.VARIANTS[variant])


def device_rate(hw: hardware.Hardware) -> float:
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
  parts: dict[str, Any]
  source: str = 'analytical terms'  # Or the GPU topology compiled for.


def plan(hw: hardware.Hardware, modes: list[str], device_counts: list[int],
         net: comms.NetShape, spec: models.AlexNetSpec, rate: float,
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


def markdown(rows: list[Row], hw: hardware.Hardware) -> str:
  """The rows as a table; where any was compiled for GPU nodes, with the
  source of each row's bytes and its compiled peak memory per device."""
  compiled = any(r.source != Row.source for r in rows)
  extra = ' from | peak GiB/device |' if compiled else ''
  out = [f'Projected on `{hw.name}` (a projection, not a measurement). '
         f'Sources: {hw.sources}', '',
         '| mode | devices | global batch | step ms | images/s | speedup | '
         'compute ms | update ms | critical comm ms | gradient comm ms '
         '(exposed) |' + extra,
         '|---|---|---|---|---|---|---|---|---|---|' + (
             '---|---|' if compiled else '')]
  for r in rows:
    p = r.parts
    line = (f'| {r.mode} | {r.devices} | {r.batch} | {r.step_s * 1e3:.1f} '
            f'| {r.images_per_sec:,.0f} | {r.speedup:.2f} | '
            f'{p["compute_s"] * 1e3:.1f} | {p["update_s"] * 1e3:.1f} | '
            f'{p["critical_s"] * 1e3:.1f} | {p["gradient_s"] * 1e3:.1f} '
            f'({p["exposed_s"] * 1e3:.1f}) |')
    if compiled:
      peak = p.get('peak_memory_bytes')
      line += (f' {r.source} | '
               + (f'{peak / 2**30:.2f} |' if peak is not None else '- |'))
    out.append(line)
  return '\n'.join(out)
