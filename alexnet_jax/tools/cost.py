"""What one train step costs per device: communication, FLOPs, memory.

  python -m alexnet_jax.tools.cost --config=configs/two_tower.py [--devices=N]
      [--batch_size=B] [--topology=v5e:4x4 | --topology=h100:2x8]
      [--max_batch] [--link_gbps=G --device_tflops=F]
      [--analytical_only] [--json_out=PATH] [--config.model.input_size=67 ...]

Compiles the real train step (`steps.make_train_step`) of the configured
execution mode, on this host's devices or simulated CPU devices when there
are too few, or with --topology for a TPU slice described by the TPU
runtime or NVIDIA GPU nodes described by JAX's CUDA plugin (no TPU or GPU
needed), and reads from the compiled program every collective, its FLOPs
and its memory. For a topology it adds where each mesh axis and collective
lies (within a host or across hosts), peak memory against the device's,
and XLA's estimate of the step time (`estimated_step_seconds`) where the
compiler gives one; for GPUs, whose compiler reports neither FLOPs nor a
time, the FLOPs of the unoptimised program and a step time projected from
the compiled program on the GPU's `plan` preset (`projected_step_seconds`).
With --max_batch it searches, over compiles, for the largest global batch
whose peak memory fits (`max_global_batch`). Beside each measured figure it
prints the
analytical expectation (`analysis.comms`, after docs/paper.md,
Parallelism), so the cost model and the code are checked against each
other; with --analytical_only it prints the model alone, for device counts
that cannot be compiled here. Bytes are bytes received by one device in one
step, as `analysis.comms` defines them.
"""

import dataclasses
from typing import Any

from absl import app
from absl import flags

from alexnet_jax import aot
from alexnet_jax import cli
from alexnet_jax import hardware
from alexnet_jax import parallel
from alexnet_jax import storage
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import compiled
from alexnet_jax.analysis import projection


def _ratio(measured, expected) -> str:
  if measured is None or not expected:
    return '-'
  return f'{measured / expected:.4f}'


def _fmt(value) -> str:
  return '-' if value is None else f'{round(value):,}'


def report(mode: str, num_devices: int, batch: int, net: comms.NetShape,
           measured: dict[str, Any] | None,
           fc_shards: int = 1) -> dict[str, Any]:
  """All figures, measured (None if not compiled) and analytical.

  hybrid_2d's `fc` axis: the compiled program's where there is one.
  """
  if measured is not None:
    fc_shards = measured.get('fc_shards', fc_shards)
  expected_terms = comms.analytical_terms(mode, num_devices, batch, net,
                                          fc_shards)
  expected = comms.analytical_figures(mode, num_devices, batch, net,
                                      fc_shards)
  expected['collective_bytes'] = comms.total_bytes(expected_terms)
  result = {'mode': mode, 'devices': num_devices, 'batch_size': batch,
            'analytical': expected,
            'analytical_terms': [dataclasses.asdict(t) | {'bytes': t.bytes}
                                 for t in expected_terms]}
  if measured is not None:
    terms = measured.pop('terms')
    measured['collective_bytes'] = comms.total_bytes(terms)
    measured['collectives_by_kind'] = comms.by_kind(terms)
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
  lines.append('analytical transfers (docs/paper.md, Parallelism):')
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
  if measured and 'projection' in measured:
    lines += ['', *compiled.gpu_lines(measured),
              f'projected_step_seconds {measured["projection"]["step_s"]:.6g}',
              'projected_images_per_sec '
              f'{measured["projection"]["images_per_sec"]:.1f}']
  seconds = measured and measured.get('estimated_step_seconds')
  raw = measured and measured.get('xla_optimal_seconds')
  if raw is not None and not seconds:
    lines += ['', 'XLA gives no usable step-time estimate for this program '
              f'(optimal_seconds {raw:.6g}).']
  if 'plan_projection' in result:
    p = result['plan_projection']
    lines += [f"alexnet_jax.tools.plan's projection on its {p['hardware']} "
              'preset instead (datasheet links and an assumed one-device '
              'speed: not a measurement):',
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
  if measured:
    lines += [f'peak_memory_bytes_per_device {measured["peak_memory_bytes"]}',
              f'flops_per_device {round(measured["flops"])}']
  if 'max_global_batch' in result:
    lines.append(f'max_global_batch {result["max_global_batch"]}')
  return '\n'.join(lines)


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.cost`."""
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
          "chips, 4 hosts; needs pip install -e '.[tpu]'), or for NVIDIA GPU "
          'nodes, GPU:HOSTSxGPUS with GPU one of '
          f'{",".join(sorted(aot.GPU_TARGETS))}, e.g. h100:2x8 (needs pip '
          "install -e '.[gpu_compile]'); no TPU or GPU needed. --devices "
          'defaults to every device of the topology.'),
      'max_batch': flags.DEFINE_bool(
          'max_batch', False, 'Also find the largest global batch whose '
          "compiled step fits each device's memory (on a GPU, the 75% JAX's "
          'allocator takes), by a search over compiles from --batch_size.'),
      'fc_shards': flags.DEFINE_integer(
          'fc_shards', None, "Mode hybrid_2d: the fc axis, devices per host "
          "(default: one host's devices; needed with --analytical_only)."),
      'json_out': flags.DEFINE_string(
          'json_out', None, 'Also write the figures as JSON here.'),
  }


def _plan_projection(mode: str, num_devices: int, batch: int,
                     net: comms.NetShape,
                     device_kind: str | None) -> dict[str, Any]:
  """{'plan_projection': ...} where the compiled-for chip has a preset of
  `alexnet_jax.tools.plan`, else {}: a time where XLA's estimate is unusable."""
  preset = hardware.PRESET_OF_DEVICE_KIND.get(device_kind)
  if preset is None:
    return {}
  hw = hardware.HARDWARE[preset]
  return {'plan_projection': {'hardware': preset} | projection.project(
      mode, num_devices, batch, net, hw, projection.device_rate(hw))}


def main(argv: list[str], flag: cli.Flags) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = flag['config'].value
  batch = flag['batch_size'].value or config.batch_size
  analytical_only = flag['analytical_only'].value
  spec = parallel.spec_of(config)
  devices = None
  if flag['topology'].value and not analytical_only:
    aot.jax_on_cpu()
    devices = aot.topology_devices(flag['topology'].value)
  num_devices = (flag['devices'].value
                 or (len(devices) if devices else config.num_devices))
  if not analytical_only and devices is None:
    devices = aot.compile_devices(num_devices)
  fc_shards = flag['fc_shards'].value
  if devices and fc_shards is None:
    fc_shards = parallel.devices_per_host(
        parallel.placement_order(devices), num_devices)
  parallel.validate(config.mode, num_devices, spec, batch,
                    len(devices) if devices else num_devices,
                    fc_shards or 1)
  net = comms.net_shape(spec)
  runs = {}
  if flag['max_batch'].value:
    if analytical_only:
      raise ValueError('--max_batch: needs compiles, not --analytical_only')
    largest, runs = compiled.max_batch(config, config.mode, num_devices,
                                       batch, devices, fc_shards)
  measured = (None if analytical_only else runs.get(batch) or
              compiled.measure(config, config.mode, num_devices, batch,
                               devices, fc_shards))
  result = report(config.mode, num_devices, batch, net, measured,
                  fc_shards or 1)
  if flag['max_batch'].value:
    result['max_global_batch'] = largest
  if (measured and measured.get('estimated_step_seconds') is None
      and 'projection' not in measured):
    result |= _plan_projection(config.mode, num_devices, batch, net,
                               measured.get('device_kind'))
  link, tflops = flag['link_gbps'].value, flag['device_tflops'].value
  if link and tflops:
    source = measured or result['analytical']
    result['projection'] = comms.link_projection(
        source['flops'], source['collective_bytes'], batch, link,
        tflops) | {'link_gbps': link, 'device_tflops': tflops}
  print(format_report(result))
  if flag['json_out'].value:
    storage.write_json(storage.check_location(flag['json_out'].value,
                                              '--json_out'), result)


if __name__ == '__main__':
  cli.run(main, define_flags, required=['config'])
