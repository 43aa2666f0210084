"""The communication model: what each execution mode's train step moves
between devices, per device per step, from the network's shape alone, and
the same read off a compiled program so the two can be compared.

Bytes are **bytes received by one device in one step**, as a ring algorithm
moves them: an all-gather or all-to-all delivers (n-1)/n of its result, a
reduce-scatter (n-1)/n of its input (n-1 times its result), an all-reduce
2(n-1)/n of its operand, a collective-permute its whole result, n being the
size of the replica group. Measured and analytical figures both go through
`received_bytes`, so they are comparable by construction.
"""

import dataclasses
import math
from typing import Iterable

from alexnet_jax import models
from alexnet_jax.analysis import hlo

PARAM_BYTES = 4  # Parameters, gradients and optimizer state are float32.


def received_bytes(kind: str, result_bytes: float, group: int) -> float:
  """Bytes one device receives for a collective (ring algorithms)."""
  if group <= 1:
    return 0.0
  factor = {'all-gather': (group - 1) / group,
            'all-to-all': (group - 1) / group,
            'reduce-scatter': group - 1,
            'all-reduce': 2 * (group - 1) / group,
            'collective-permute': 1}[kind]
  return result_bytes * factor


@dataclasses.dataclass(frozen=True)
class Term:
  """One collective (measured) or one expected transfer (analytical)."""
  kind: str
  what: str
  result_bytes: float  # On one device, per occurrence.
  group: int
  count: int = 1

  @property
  def bytes(self) -> float:
    return self.count * received_bytes(self.kind, self.result_bytes,
                                       self.group)


def measured_terms(hlo_text: str, num_devices: int) -> list[Term]:
  """Every collective of a compiled program, with its replica-group size."""
  terms = []
  for line in hlo_text.splitlines():
    for op in hlo.collectives(line):
      group = (2 if op.kind == 'collective-permute'
               else len(hlo.replica_groups(line, num_devices)[0]))
      terms.append(Term(op.kind, 'x'.join(map(str, op.shapes)), op.bytes,
                        group))
  return terms


@dataclasses.dataclass(frozen=True)
class NetShape:
  """What the cost model needs to know about the network."""
  towers: int
  pool2: int  # Values per image per tower at the input of conv3.
  pool5: int  # ... of fc6.
  fc: tuple[int, int]  # Outputs of fc6 and fc7 per tower.
  classes: int
  conv_params: int
  fc_params: int
  macs: int  # Forward multiply-adds per image.
  conv1_macs: int
  act_bytes: int  # Bytes per activation value (compute dtype).


def net_shape(spec) -> NetShape:
  """The cost model's view of `models.layer_stats` (the model traced,
  nothing allocated)."""
  rows = {row['layer']: row for row in models.layer_stats(spec)}
  total = lambda key, layers: sum(rows[k][key] for k in layers)
  return NetShape(
      towers=spec.num_towers, pool2=math.prod(rows['pool2']['output']),
      pool5=math.prod(rows['pool5']['output']), fc=tuple(spec.fc_features),
      classes=spec.num_classes,
      conv_params=total('params', models.CONV_LAYERS),
      fc_params=total('params', models.FC_LAYERS),
      macs=total('macs', models.LAYERS), conv1_macs=rows['conv1']['macs'],
      act_bytes=2 if spec.dtype == 'bfloat16' else 4)


def _tower_exchange(net: NetShape, batch: int) -> list[Term]:
  """The paper's exchange on `batch` images: each device holds one tower."""
  t, a = net.towers, net.act_bytes
  per_tower = {'conv3 input (pool2)': net.pool2, 'fc6 input (pool5)':
               net.pool5, 'fc7 input (fc6)': net.fc[0],
               'fc8 input (fc7)': net.fc[1]}
  terms = [Term('all-gather', f'fwd: {name}', batch * v * t * a, t)
           for name, v in per_tower.items()]
  terms.append(Term('all-gather', 'fwd: logits (our addition: the softmax '
                    'needs every class)', batch * net.classes * a, t))
  terms += [Term('reduce-scatter', f'bwd: gradient of {name}', batch * v * a,
                 t) for name, v in per_tower.items()]
  return terms


def _metrics(batch: int, net: NetShape, group: int,
             gather_group: int | None = None) -> list[Term]:
  """The train metrics over a batch split `group` ways: XLA gathers the
  (float32) logits to sort them for top-k, and averages three scalars.
  Where towers replicate the logits, XLA gathers over every device
  (`gather_group`), duplicates included."""
  return [Term('all-gather', 'metrics: logits gathered for top-k',
               batch * net.classes * 4, gather_group or group),
          Term('all-reduce', 'metrics: loss, top-1, top-5 means',
               3 * PARAM_BYTES, group)]


def analytical_terms(mode: str, num_devices: int, batch: int,
                     net: NetShape, fc_shards: int = 1) -> list[Term]:
  """The transfers of one train step, as docs/paper.md (Parallelism) counts
  them.

  `fc_shards`: the `fc` axis of mode hybrid_2d.
  """
  params = net.conv_params + net.fc_params
  if mode == 'single':
    return []
  if mode == 'data':
    return [Term('all-reduce', 'bwd: every gradient', params * PARAM_BYTES,
                 num_devices), *_metrics(batch, net, num_devices)]
  if mode == 'tower':
    return _tower_exchange(net, batch)
  if mode == 'data_tower':
    rows = num_devices // net.towers
    return _tower_exchange(net, batch // rows) + [
        Term('all-reduce', "bwd: this tower's gradients over data",
             params // net.towers * PARAM_BYTES, rows),
        *_metrics(batch, net, rows, num_devices)]
  if mode == 'hybrid':
    return [Term('all-reduce', 'bwd: conv gradients',
                 net.conv_params * PARAM_BYTES, num_devices),
            *_fc_split_terms(batch, num_devices, net),
            *_metrics(batch, net, num_devices)]
  rows = num_devices // fc_shards  # hybrid_2d: rows of `fc_shards` devices.
  return [Term('all-reduce', 'bwd: conv gradients',
               net.conv_params * PARAM_BYTES, num_devices),
          Term('all-reduce', 'bwd: FC gradients over data',
               net.fc_params // fc_shards * PARAM_BYTES, rows),
          *_fc_split_terms(batch // rows, fc_shards, net),
          *_metrics(batch, net, num_devices)]


def _fc_split_terms(batch: int, n: int, net: NetShape) -> list[Term]:
  """The FC layers split n ways by output feature over `batch` images."""
  t, a = net.towers, net.act_bytes
  fc_in = net.pool5 * t
  return [
      Term('all-gather', 'fwd: fc6 input, whole batch', batch * fc_in * a, n),
      Term('all-gather', 'fwd: fc6 output features', batch * t * net.fc[0] * a,
           n),
      Term('all-gather', 'fwd: fc7 output features', batch * t * net.fc[1] * a,
           n),
      Term('all-gather', 'fwd: logits', batch * net.classes * a, n),
      Term('all-reduce', 'bwd: gradient of the logits (gathered whole)',
           batch * net.classes * a, n),
      Term('reduce-scatter', 'bwd: gradient of fc6 input',
           batch // n * fc_in * a, n),
      Term('reduce-scatter', 'bwd: gradient of fc6 output',
           batch * t * net.fc[0] // n * a, n),
      Term('reduce-scatter', 'bwd: gradient of fc7 output',
           batch * t * net.fc[1] // n * a, n)]


def analytical_figures(mode: str, num_devices: int, batch: int,
                       net: NetShape, fc_shards: int = 1) -> dict[str, float]:
  """Per device per step: FLOPs and parameter bytes.

  Training FLOPs: the forward pass, the weight gradients (as much again) and
  the input gradients of every layer but conv1 (the image needs none).
  """
  params = net.conv_params + net.fc_params
  devices = 1 if mode == 'single' else num_devices
  per_device = {'single': params, 'data': params,
                'tower': params / net.towers,
                'data_tower': params / net.towers,
                'hybrid': net.conv_params + net.fc_params / num_devices,
                'hybrid_2d': net.conv_params + net.fc_params / fc_shards}[mode]
  macs = 3 * net.macs - net.conv1_macs
  return {'flops': 2 * macs * batch / devices,
          'param_bytes': per_device * PARAM_BYTES,
          'opt_state_bytes': per_device * PARAM_BYTES}  # One momentum.


def total_bytes(terms: Iterable[Term]) -> int:
  return round(sum(t.bytes for t in terms))


def by_kind(terms: list[Term]) -> dict[str, tuple[int, int]]:
  """kind -> (count, received bytes)."""
  out = {}
  for t in terms:
    count, size = out.get(t.kind, (0, 0.0))
    out[t.kind] = (count + t.count, size + t.bytes)
  return {k: (c, round(b)) for k, (c, b) in sorted(out.items())}


def link_projection(flops: float, comm_bytes: float, batch: int,
                    link_gbps: float, device_tflops: float
                    ) -> dict[str, float]:
  """Step time with communication not overlapped with compute (an upper
  bound) and fully overlapped (a lower bound)."""
  compute = flops / (device_tflops * 1e12)
  comm = comm_bytes * 8 / (link_gbps * 1e9)
  return {'compute_s': compute, 'comm_s': comm, 'step_s': compute + comm,
          'overlapped_step_s': max(compute, comm),
          'comm_share': comm / (compute + comm) if compute + comm else 0.0,
          'images_per_sec': batch / (compute + comm)}
