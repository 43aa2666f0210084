"""Measured time of a strategy's train step: compute against collectives.

  python -m alexnet_jax.tools.profile --config=configs/two_tower.py --steps=5 \\
      --out=DIR [--warmup=2] [--batch_size=B] [--json_out=PATH] \\
      [--config.key=value ...]

Compiles the real train step of the configured mode on device-resident
uint8 batches (as `tools/benchmark` does), warms it up, traces `--steps`
calls with JAX's profiler into DIR (TensorBoard's profile plugin and
Perfetto read it) and prints, per step and per device averaged over the
traced steps, the split `analysis.trace` reads off the trace.
"""

import statistics

from absl import flags
import jax

from alexnet_jax import capture
from alexnet_jax import cli
from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax import storage
from alexnet_jax.analysis import trace


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.profile`."""
  return {
      'config': cli.config_flag('configs/two_tower.py'),
      'out': flags.DEFINE_string(
          'out', None, 'Trace directory (a TensorBoard log directory).'),
      'steps': flags.DEFINE_integer('steps', 5, 'Traced steps.'),
      'warmup': flags.DEFINE_integer(
          'warmup', 2, 'Untraced steps first (the first compiles).'),
      'batch_size': flags.DEFINE_integer(
          'batch_size', None, 'Global batch (default: config.batch_size).'),
      'json_out': flags.DEFINE_string(
          'json_out', None, 'Also write the figures as JSON here (report '
          'reads WORKDIR/profile.json).'),
  }


def main(argv: list[str], flag: cli.Flags) -> None:
  del argv
  config = flag['config'].value
  num_steps, warmup = flag['steps'].value, flag['warmup'].value
  if num_steps < 1 or warmup < 1:
    raise ValueError('--steps and --warmup: at least 1 each (the first '
                     'warm-up step compiles)')
  out = storage.check_location(flag['out'].value, '--out')
  try:
    storage.makedirs(out)
  except Exception as error:  # pylint: disable=broad-except
    raise OSError(f'--out: cannot create {out} ({error})') from None
  parallel.request_cpu_devices(config.num_devices)
  batch = flag['batch_size'].value or config.batch_size
  step = steps.resident_train_step(config, batch)
  text = step.compiled().as_text()
  for _ in range(warmup):
    step()
  trace_path, walls = capture.trace_steps(step, num_steps, out)
  module = trace.module_name(text)
  ops, source = trace.read_ops(trace_path, module)
  device = jax.devices()[0]
  print(f'{config.mode} mode, {config.num_devices} x {device.device_kind}, '
        f'batch {batch}, {num_steps} traced steps, ops from {source}; trace: '
        f'{trace_path}')
  figures = trace.measure(ops, trace.known_collectives(text))
  wall = statistics.median(walls)
  if figures is None:
    print(trace.no_events_line(module, source, trace_path))
    print(f'wall_step_seconds {wall:.6g}')
    return
  trace.add_compiled_bytes(figures, text, config.num_devices)
  print(trace.format_figures(figures))
  print(f'wall_step_seconds {wall:.6g}')
  if flag['json_out'].value:
    trace.write_json(flag['json_out'].value, figures | {
        'mode': config.mode, 'num_devices': config.num_devices,
        'batch_size': batch, 'device_kind': device.device_kind,
        'wall_step_seconds': wall, 'trace': trace_path, 'source': source})


if __name__ == '__main__':
  cli.run(main, define_flags, required=['out'])
