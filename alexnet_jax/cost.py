"""What one train step costs per device: communication, FLOPs, memory.

  python -m alexnet_jax.cost --config=configs/two_tower.py [--devices=N]
      [--batch_size=B] [--topology=v5e:4x4] [--link_gbps=G --device_tflops=F]
      [--analytical_only] [--json_out=PATH] [--config.model.input_size=67 ...]

Compiles the real train step (`train.make_train_step`) of the configured
execution mode, on this host's devices or simulated CPU devices when there
are too few, or with --topology for a TPU slice described by the TPU
runtime (no TPU needed), and reads from the compiled program every
collective, its FLOPs and its memory. For a TPU slice it adds where each
mesh axis and collective lies (within a host or across hosts), peak memory
against the chip's HBM, and XLA's estimate of the step time
(`estimated_step_seconds`). Beside
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

import contextlib
import dataclasses
import json
import math
import re
import warnings
from typing import Any, Iterable, Iterator, Sequence

from absl import app
from absl import flags

from alexnet_jax import cli
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
  """The cost model's view of `models.layer_stats` (the model traced,
  nothing allocated)."""
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
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
  """The transfers SPEC.md section 5 predicts for one train step.

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


def _bytes_per_device(tree: Any) -> int:
  """Bytes of one device's shards of a tree of global arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def abstract_train_state(spec, strategy, tx) -> Any:
  """The train state's shapes and shardings, nothing allocated: what ahead-
  of-time compilation for devices this process cannot reach needs."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  params = parallel.abstract_params(spec, strategy)
  with jax.set_mesh(strategy.mesh), quiet_cache_reads(strategy.mesh):
    init = jax.jit(tx.init).lower(params).compile()
  opt_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(tx.init, params), init.output_shardings)
  step = jax.ShapeDtypeStruct((), jax.numpy.int32,
                              sharding=strategy.replicated())
  return train.TrainState(step, params, opt_state)


def compile_train_step(config: Any, strategy: Any, batch: int) -> tuple[
    Any, Any]:
  """(compiled train step, abstract state) for a global batch of `batch`."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import optim  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import device  # pylint: disable=g-import-not-at-top
  spec = parallel.spec_of(config)
  tx = optim.create_optimizer(config.optimizer,
                              parallel.abstract_params(spec))
  state = abstract_train_state(spec, strategy, tx)
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype,
                             sharding=strategy.replicated())
  batch_args = {k: jax.ShapeDtypeStruct(shape, dtype,
                                        sharding=strategy.batch_sharding())
                for k, (shape, dtype) in device.train_batch_shapes(
                    batch, spec.input_size).items()}
  with jax.set_mesh(strategy.mesh), quiet_cache_reads(strategy.mesh):
    step = train.make_train_step(spec, strategy, tx, state,
                                 device.Normalization.from_config(config))
    compiled = step.lower(state, batch_args, 0.01, key).compile()
  return compiled, state


@contextlib.contextmanager
def quiet_cache_reads(mesh: Any) -> Iterator[None]:
  """Silences JAX's persistent-cache read warnings while compiling for
  devices this process has no client for (a described TPU slice): such
  programs are written to the cache but cannot be loaded back, so every
  read fails harmlessly and the program is compiled again."""
  import jax  # pylint: disable=g-import-not-at-top
  reachable = set(jax.devices()) | set(jax.devices('cpu'))
  with warnings.catch_warnings():
    if not set(mesh.devices.flat) <= reachable:
      warnings.filterwarnings(
          'ignore', message='Error reading persistent compilation cache')
    yield


def usable_estimate(analysis: dict[str, Any]) -> float | None:
  """XLA's step-time estimate (`optimal_seconds`), or None where it has
  none or a negative one (the TPU compiler's for the full-size net: it
  cannot cost every operation)."""
  seconds = analysis.get('optimal_seconds')
  return seconds if seconds is not None and seconds > 0 else None


def peak_memory(compiled: Any) -> int:
  """Peak bytes per device of a compiled program."""
  memory = compiled.memory_analysis()
  return memory.peak_memory_in_bytes or (
      memory.argument_size_in_bytes + memory.output_size_in_bytes
      - memory.alias_size_in_bytes + memory.temp_size_in_bytes)


def measure(config: Any, mode: str, num_devices: int, batch: int,
            devices: Sequence[Any] | None = None,
            fc_shards: int | None = None) -> dict[str, Any]:
  """Compiles the train step and reads its collectives, FLOPs and memory.

  `devices`: where to compile (default: this process's devices); a TPU
  topology's devices (`topology.topology_devices`) add XLA's estimate of the
  step time and the placement of every collective on the slice's hosts.
  """
  from alexnet_jax import topology  # pylint: disable=g-import-not-at-top
  spec = parallel.spec_of(config)
  strategy = parallel.create_strategy(mode, num_devices, spec, batch,
                                      devices=devices, fc_shards=fc_shards)
  compiled, state = compile_train_step(config, strategy, batch)
  text = compiled.as_text()
  analysis = compiled.cost_analysis()
  kind = strategy.mesh.devices.flat[0].device_kind
  peak = peak_memory(compiled)
  return {'terms': measured_terms(text, num_devices),
          'flops': analysis['flops'],
          'param_bytes': _bytes_per_device(state.params),
          'opt_state_bytes': _bytes_per_device(state.opt_state),
          'peak_memory_bytes': peak,
          'xla_optimal_seconds': analysis.get('optimal_seconds'),
          'estimated_step_seconds': usable_estimate(analysis),
          'device_kind': kind,
          'fc_shards': strategy.layout.fc_shards,
          'placement': (topology.placement_lines(strategy.mesh, text)
                        + topology.memory_lines(peak, kind))}


def total_bytes(terms: Iterable[Term]) -> int:
  return round(sum(t.bytes for t in terms))


def by_kind(terms: list[Term]) -> dict[str, tuple[int, int]]:
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
           measured: dict[str, Any] | None,
           fc_shards: int = 1) -> dict[str, Any]:
  """All figures, measured (None if not compiled) and analytical.

  hybrid_2d's `fc` axis: the compiled program's where there is one.
  """
  if measured is not None:
    fc_shards = measured.get('fc_shards', fc_shards)
  expected_terms = analytical_terms(mode, num_devices, batch, net, fc_shards)
  expected = analytical_figures(mode, num_devices, batch, net, fc_shards)
  expected['collective_bytes'] = total_bytes(expected_terms)
  result = {'mode': mode, 'devices': num_devices, 'batch_size': batch,
            'analytical': expected,
            'analytical_terms': [dataclasses.asdict(t) | {'bytes': t.bytes}
                                 for t in expected_terms]}
  if measured is not None:
    terms = measured.pop('terms')
    measured['collective_bytes'] = total_bytes(terms)
    measured['collectives_by_kind'] = by_kind(terms)
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
  if measured and measured.get('placement'):
    lines += ['', 'placement (mesh axes on the hardware; collectives by '
              'replica group):', *measured['placement']]
  seconds = measured and measured.get('estimated_step_seconds')
  raw = measured and measured.get('xla_optimal_seconds')
  if raw is not None and not seconds:
    lines += ['', 'XLA gives no usable step-time estimate for this program '
              f'(optimal_seconds {raw:.6g}).']
  if 'plan_projection' in result:
    p = result['plan_projection']
    lines += [f"alexnet_jax.plan's projection on its {p['hardware']} preset "
              "instead (datasheet links and an assumed one-device speed: "
              'not a measurement):',
              f'projected_step_seconds {p["step_s"]:.6g}',
              f'projected_images_per_sec {p["images_per_sec"]:.1f}']
  if seconds:
    lines += ['', "XLA's estimate for this device (an estimate, not a "
              'measurement):',
              f'estimated_step_seconds {seconds:.6g}',
              f'estimated_images_per_sec {result["batch_size"] / seconds:.1f}']
  final = measured or expected
  lines += [f'collective_bytes_per_step {final["collective_bytes"]}',
            f'param_bytes_per_device {round(final["param_bytes"])}']
  return '\n'.join(lines)


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.cost`."""
  return {
      'config': cli.config_flag(),
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
      'topology': flags.DEFINE_string(
          'topology', None, 'Compile for a TPU slice, e.g. v5e:4x4 (16 '
          "chips, 4 hosts); needs the TPU runtime (pip install -e '.[tpu]'), "
          'not a TPU. --devices defaults to every chip of the slice.'),
      'fc_shards': flags.DEFINE_integer(
          'fc_shards', None, "Mode hybrid_2d: the fc axis, devices per host "
          "(default: one host's devices; needed with --analytical_only)."),
      'json_out': flags.DEFINE_string(
          'json_out', None, 'Also write the figures as JSON here.'),
  }


def _plan_projection(mode: str, num_devices: int, batch: int, net: NetShape,
                     device_kind: str | None) -> dict[str, Any]:
  """{'plan_projection': ...} where the compiled-for chip has a preset of
  `alexnet_jax.plan`, else {}: a time where XLA's estimate is unusable."""
  from alexnet_jax import plan  # pylint: disable=g-import-not-at-top
  preset = plan.PRESET_OF_DEVICE_KIND.get(device_kind)
  if preset is None:
    return {}
  hw = plan.HARDWARE[preset]
  return {'plan_projection': {'hardware': preset} | plan.project(
      mode, num_devices, batch, net, hw, plan.device_rate(hw))}


def jax_on_cpu() -> None:
  """The host's own backend is the CPU when compiling for a described
  slice: no process should try to claim a TPU it does not need."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_platforms', 'cpu')


def compile_devices(num_devices: int) -> list[Any]:
  """This host's devices if it has enough, else simulated CPU devices: the
  collectives and memory of a mesh larger than the host can still be read."""
  parallel.request_cpu_devices(num_devices)
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return devices if len(devices) >= num_devices else jax.devices('cpu')


def main(argv: list[str], flag: cli.Flags) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = flag['config'].value
  batch = flag['batch_size'].value or config.batch_size
  analytical_only = flag['analytical_only'].value
  spec = parallel.spec_of(config)
  devices = None
  if flag['topology'].value and not analytical_only:
    from alexnet_jax import topology  # pylint: disable=g-import-not-at-top
    jax_on_cpu()
    devices = topology.topology_devices(flag['topology'].value)
  num_devices = (flag['devices'].value
                 or (len(devices) if devices else config.num_devices))
  if not analytical_only and devices is None:
    devices = compile_devices(num_devices)
  fc_shards = flag['fc_shards'].value
  if devices and fc_shards is None:
    fc_shards = parallel.devices_per_host(
        parallel.placement_order(devices), num_devices)
  parallel.validate(config.mode, num_devices, spec, batch,
                    len(devices) if devices else num_devices,
                    fc_shards or 1)
  net = net_shape(spec)
  measured = (None if analytical_only
              else measure(config, config.mode, num_devices, batch, devices,
                            fc_shards))
  result = report(config.mode, num_devices, batch, net, measured,
                  fc_shards or 1)
  if measured and measured.get('estimated_step_seconds') is None:
    result |= _plan_projection(config.mode, num_devices, batch, net,
                               measured.get('device_kind'))
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
  cli.run(main, define_flags, required=['config'])
