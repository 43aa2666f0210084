"""What one train step costs per device: communication, FLOPs, memory.

  python -m alexnet_jax.cost --config=configs/two_tower.py [--devices=N]
      [--batch_size=B] [--link_gbps=G --device_tflops=F] [--analytical_only]
      [--json_out=PATH] [--config.model.input_size=67 ...]

Compiles the real train step (`train.make_train_step`) of the configured
execution mode, simulating CPU devices when there are too few, and reads
from the compiled program every collective, its FLOPs and its memory. Beside
each measured figure it prints the analytical expectation (SPEC.md section
5), so the cost model and the code are checked against each other; with
--analytical_only it prints the model alone, for device counts that cannot
be compiled here.

Bytes are **bytes received by one device in one step**, as a ring algorithm
moves them: an all-gather or all-to-all delivers (n-1)/n of its result, a
reduce-scatter (n-1)/n of its input (n-1 times its result), an all-reduce
2(n-1)/n of its operand, a collective-permute its whole result, n being the
size of the replica group. Measured and analytical figures both go through
`received_bytes`, so they are comparable by construction.
"""

import dataclasses
import json
import math
import re
import sys
from typing import Any, Iterable

from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax import hlo
from alexnet_jax import parallel

_GROUPS_LIST = re.compile(r'replica_groups=\{\{([\d,]*)\}')
_GROUPS_IOTA = re.compile(r'replica_groups=\[\d+,(\d+)\]')
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


def _group_size(line: str, num_devices: int) -> int:
  if match := _GROUPS_LIST.search(line):
    return len(match.group(1).split(','))
  if match := _GROUPS_IOTA.search(line):
    return int(match.group(1))
  return num_devices  # `replica_groups={}`: every device.


def measured_terms(hlo_text: str, num_devices: int) -> list[Term]:
  """Every collective of a compiled program, with its replica-group size."""
  terms = []
  for line in hlo_text.splitlines():
    for op in hlo.collectives(line):
      group = (2 if op.kind == 'collective-permute'
               else _group_size(line, num_devices))
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
  """Layer shapes from the model itself (traced, nothing allocated)."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
  params = parallel.abstract_params(spec)
  image = jax.ShapeDtypeStruct((1, spec.input_size, spec.input_size, 3),
                               jax.numpy.float32)
  _, state = jax.eval_shape(
      lambda p, x: models.AlexNet(spec).apply(
          {'params': p}, x, train=False, mutable=['intermediates']),
      params, image)
  (outputs,) = state['intermediates']['layer_outputs']
  per_image = lambda name: math.prod(outputs[name][0].shape[1:])
  size = lambda layer: sum(x.size for x in jax.tree.leaves(params[layer]))
  # A conv kernel is used at every output position, an FC kernel once.
  macs = {k: params[k]['kernel'].size * math.prod(outputs[k][0].shape[1:3])
          for k in models.CONV_LAYERS}
  macs.update({k: params[k]['kernel'].size for k in models.FC_LAYERS})
  return NetShape(
      towers=spec.num_towers, pool2=per_image('pool2'),
      pool5=per_image('pool5'), fc=tuple(spec.fc_features),
      classes=spec.num_classes,
      conv_params=sum(size(k) for k in models.CONV_LAYERS),
      fc_params=sum(size(k) for k in models.FC_LAYERS),
      macs=sum(macs.values()), conv1_macs=macs['conv1'],
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
                     net: NetShape) -> list[Term]:
  """The transfers SPEC.md section 5 predicts for one train step."""
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
  n, t, a = num_devices, net.towers, net.act_bytes
  fc_in = net.pool5 * t
  return [
      Term('all-reduce', 'bwd: conv gradients', net.conv_params * PARAM_BYTES,
           n),
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
           batch * t * net.fc[1] // n * a, n),
      *_metrics(batch, net, n)]


def analytical_figures(mode: str, num_devices: int, batch: int,
                       net: NetShape) -> dict[str, float]:
  """Per device per step: FLOPs and parameter bytes.

  Training FLOPs: the forward pass, the weight gradients (as much again) and
  the input gradients of every layer but conv1 (the image needs none).
  """
  params = net.conv_params + net.fc_params
  devices = 1 if mode == 'single' else num_devices
  per_device = {'single': params, 'data': params,
                'tower': params / net.towers,
                'data_tower': params / net.towers,
                'hybrid': net.conv_params + net.fc_params / num_devices}[mode]
  macs = 3 * net.macs - net.conv1_macs
  return {'flops': 2 * macs * batch / devices,
          'param_bytes': per_device * PARAM_BYTES,
          'opt_state_bytes': per_device * PARAM_BYTES}  # One momentum.


def _bytes_per_device(tree: Any) -> int:
  """Bytes of one device's shards of a tree of global arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def measure(config: Any, mode: str, num_devices: int,
            batch: int) -> dict[str, Any]:
  """Compiles the train step and reads its collectives, FLOPs and memory."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import optim  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import device  # pylint: disable=g-import-not-at-top
  spec = parallel.spec_of(config)
  strategy = parallel.create_strategy(mode, num_devices, spec, batch)
  with jax.set_mesh(strategy.mesh):
    tx = optim.create_optimizer(config.optimizer,
                                parallel.abstract_params(spec))
    state = train.create_train_state(spec, strategy, tx, jax.random.key(0))
    step = train.make_train_step(spec, strategy, tx, state,
                                 device.Normalization.from_config(config))
    shapes = device.train_batch_shapes(batch, spec.input_size)
    batch_like = {k: jax.ShapeDtypeStruct(shape, dtype,
                                          sharding=strategy.batch_sharding())
                  for k, (shape, dtype) in shapes.items()}
    compiled = step.lower(state, batch_like, 0.01,
                          jax.random.key(0)).compile()
  memory = compiled.memory_analysis()
  peak = memory.peak_memory_in_bytes or (
      memory.argument_size_in_bytes + memory.output_size_in_bytes
      - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  return {'terms': measured_terms(compiled.as_text(), num_devices),
          'flops': compiled.cost_analysis()['flops'],
          'param_bytes': _bytes_per_device(state.params),
          'opt_state_bytes': _bytes_per_device(state.opt_state),
          'peak_memory_bytes': peak}


def total_bytes(terms: Iterable[Term]) -> int:
  return round(sum(t.bytes for t in terms))


def _by_kind(terms: list[Term]) -> dict[str, tuple[int, int]]:
  """kind -> (count, received bytes)."""
  out = {}
  for t in terms:
    count, size = out.get(t.kind, (0, 0.0))
    out[t.kind] = (count + t.count, size + t.bytes)
  return {k: (c, round(b)) for k, (c, b) in sorted(out.items())}


def _ratio(measured, expected) -> str:
  if measured is None or not expected:
    return '-'
  return f'{measured / expected:.4f}'


def _fmt(value) -> str:
  return '-' if value is None else f'{round(value):,}'


def projection(flops: float, comm_bytes: float, batch: int, link_gbps: float,
               device_tflops: float) -> dict[str, float]:
  """Step time with communication not overlapped with compute (an upper
  bound) and fully overlapped (a lower bound)."""
  compute = flops / (device_tflops * 1e12)
  comm = comm_bytes * 8 / (link_gbps * 1e9)
  return {'compute_s': compute, 'comm_s': comm, 'step_s': compute + comm,
          'overlapped_step_s': max(compute, comm),
          'comm_share': comm / (compute + comm) if compute + comm else 0.0,
          'images_per_sec': batch / (compute + comm)}


def report(mode: str, num_devices: int, batch: int, net: NetShape,
           measured: dict[str, Any] | None) -> dict[str, Any]:
  """All figures, measured (None if not compiled) and analytical."""
  expected_terms = analytical_terms(mode, num_devices, batch, net)
  expected = analytical_figures(mode, num_devices, batch, net)
  expected['collective_bytes'] = total_bytes(expected_terms)
  result = {'mode': mode, 'devices': num_devices, 'batch_size': batch,
            'analytical': expected,
            'analytical_terms': [dataclasses.asdict(t) | {'bytes': t.bytes}
                                 for t in expected_terms]}
  if measured is not None:
    terms = measured.pop('terms')
    measured['collective_bytes'] = total_bytes(terms)
    measured['collectives_by_kind'] = _by_kind(terms)
    result['measured'] = measured
  return result


def format_report(result: dict[str, Any]) -> str:
  """Human-readable table; ends with the two machine-readable lines."""
  measured, expected = result.get('measured'), result['analytical']
  lines = [f'train step of mode {result["mode"]} on {result["devices"]} '
           f'devices, global batch {result["batch_size"]}; per device per '
           'step.',
           'bytes = bytes received by one device, ring algorithms: '
           'all-gather (n-1)/n of the result, reduce-scatter (n-1)/n of the '
           'input, all-reduce 2(n-1)/n.', '']
  if measured:
    lines.append('measured collectives (compiled HLO):')
    lines.append(f'  {"kind":<20}{"count":>7}{"bytes":>16}')
    for kind, (count, size) in measured['collectives_by_kind'].items():
      lines.append(f'  {kind:<20}{count:>7}{size:>16,}')
    lines.append('')
  lines.append('analytical transfers (SPEC.md section 5):')
  for t in result['analytical_terms']:
    lines.append(f'  {t["kind"]:<16}{t["what"]:<58}{round(t["bytes"]):>16,}')
  lines += ['', f'{"figure":<34}{"measured":>18}{"analytical":>18}'
            f'{"ratio":>9}']
  for key, label in (('collective_bytes', 'collective bytes'),
                     ('flops', 'FLOPs'),
                     ('param_bytes', 'parameter bytes'),
                     ('opt_state_bytes', 'optimizer-state bytes'),
                     ('peak_memory_bytes', 'peak memory bytes')):
    got = measured.get(key) if measured else None
    want = expected.get(key)
    lines.append(f'{label:<34}{_fmt(got):>18}{_fmt(want):>18}'
                 f'{_ratio(got, want):>9}')
  if 'projection' in result:
    p = result['projection']
    lines += ['', f'projection at {p["link_gbps"]:g} Gbit/s and '
              f'{p["device_tflops"]:g} TFLOP/s per device: step '
              f'{p["step_s"] * 1e3:.2f} ms ({p["compute_s"] * 1e3:.2f} '
              f'compute + {p["comm_s"] * 1e3:.2f} communication, '
              f'{p["comm_share"]:.0%} communication), '
              f'{p["images_per_sec"]:,.0f} images/s; '
              f'{p["overlapped_step_s"] * 1e3:.2f} ms if fully overlapped']
  final = measured or expected
  lines += [f'collective_bytes_per_step {final["collective_bytes"]}',
            f'param_bytes_per_device {round(final["param_bytes"])}']
  return '\n'.join(lines)


def _define_flags() -> dict[str, Any]:
  """Command-line flags; defined only when run as a program, so that the
  module can be imported beside other entry points that define --config."""
  return {
      'config': config_flags.DEFINE_config_file(
          'config', None, 'Experiment config file.', lock_config=True),
      'devices': flags.DEFINE_integer(
          'devices', None, 'Devices (default: config.num_devices).'),
      'batch_size': flags.DEFINE_integer(
          'batch_size', None, 'Global batch (default: config.batch_size).'),
      'link_gbps': flags.DEFINE_float(
          'link_gbps', None, 'Projection: bandwidth each device receives '
          'at, in Gbit/s (100 GbE: 100; NVLink 3, 300 GB/s each way: 2400).'),
      'device_tflops': flags.DEFINE_float(
          'device_tflops', None,
          'Projection: sustained TFLOP/s of one device.'),
      'analytical_only': flags.DEFINE_bool(
          'analytical_only', False, 'Print the analytical model only; '
          'compiles nothing, so any device count works.'),
      'json_out': flags.DEFINE_string(
          'json_out', None, 'Also write the figures as JSON here.'),
  }


def main(argv, flag: dict[str, Any]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = flag['config'].value
  num_devices = flag['devices'].value or config.num_devices
  batch = flag['batch_size'].value or config.batch_size
  analytical_only = flag['analytical_only'].value
  if not analytical_only:
    parallel.request_cpu_devices(num_devices)
  spec = parallel.spec_of(config)
  try:
    parallel.validate(config.mode, num_devices, spec, batch, num_devices)
  except ValueError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)
  net = net_shape(spec)
  measured = (None if analytical_only
              else measure(config, config.mode, num_devices, batch))
  result = report(config.mode, num_devices, batch, net, measured)
  link, tflops = flag['link_gbps'].value, flag['device_tflops'].value
  if link and tflops:
    source = measured or result['analytical']
    result['projection'] = projection(
        source['flops'], source['collective_bytes'], batch, link,
        tflops) | {'link_gbps': link, 'device_tflops': tflops}
  print(format_report(result))
  if flag['json_out'].value:
    with open(flag['json_out'].value, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  _FLAGS = _define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(lambda argv: main(argv, _FLAGS))
