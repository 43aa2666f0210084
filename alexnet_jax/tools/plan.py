"""Projects the train step of each execution mode onto a GPU cluster.

  python -m alexnet_jax.tools.plan --hardware=owt_k20 --modes=hybrid,data \\
      --devices=1,2,4,8 [--batch_per_device=128 | --global_batch=1024] \\
      [--variant=owt] [--step_seconds=S --step_batch=B] [--out=DIR]

Per mode and device count it prints one line
`plan <mode> <devices> <global_batch> <step_seconds> <images_per_sec>
<speedup>`, then a Markdown table, and writes DIR/plan.md and DIR/plan.png
(speedup against devices, one line per mode). Every figure is a projection.

The model is `analysis.projection`; its docstring says what it counts and
what it leaves out. For a GPU preset whose GPU compiles here (its target
description ships and `pip install -e '.[gpu_compile]'` is installed), each
row whose devices fill whole nodes is the train step compiled for those
nodes (`h100:2x8`): its FLOPs, parameter bytes and every compiled
collective on NVLink or the network, with its peak memory per GPU; the
other rows, and every row with --nocompile, are the preset's analytical
terms. The table's `from` column and a line per row on stderr say which.
"""

import dataclasses
import os
import sys
from typing import Any

from absl import app
from absl import flags

from alexnet_jax import aot
from alexnet_jax import cli
from alexnet_jax import defaults
from alexnet_jax import hardware
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import compiled
from alexnet_jax.analysis import figures
from alexnet_jax.analysis import projection


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
  """The flags of `python -m alexnet_jax.tools.plan`."""
  return {
      'hardware': flags.DEFINE_enum('hardware', None, sorted(hardware.HARDWARE),
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
      'compile': flags.DEFINE_bool(
          'compile', True, "Project GPU presets' rows from the train step "
          'compiled for their nodes where it compiles here (the gpu_compile '
          'extra); --nocompile: the analytical terms only.'),
  }


def _compiled_rows(rows: list[projection.Row], hw: hardware.Hardware,
                   variant: str, rate: float,
                   fixed_batch: bool) -> list[projection.Row]:
  """Each row projected from its train step compiled for `hw`'s GPU nodes
  where one compiles, its speedup over one GPU compiled the same way (at
  the row's per-device batch, or with `fixed_batch` its global batch)."""
  config = defaults.get_config()
  config.model.variant = variant
  cache = {}

  def project(mode, n, batch):
    if (mode, n, batch) not in cache:
      cache[mode, n, batch] = compiled.project_on_nodes(
          config, 'single' if n == 1 else mode, n, batch, hw, rate)
    return cache[mode, n, batch]

  out = []
  for r in rows:
    got = project(r.mode, r.devices, r.batch)
    one = got and project('single', 1,
                          r.batch if fixed_batch else r.batch // r.devices)
    if not got or not one:
      out.append(r)
      continue
    out.append(dataclasses.replace(
        r, step_s=got['step_s'], images_per_sec=got['images_per_sec'],
        speedup=got['images_per_sec'] / one['images_per_sec'], parts=got,
        source=f'compiled for {got["topology"]}'))
  return out


def main(argv, flag: dict[str, Any]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  aot.jax_on_cpu()  # Shapes only; no device is used.
  hw = hardware.HARDWARE[flag['hardware'].value]
  if flag['step_seconds'].value:
    hw = dataclasses.replace(
        hw, step_seconds=flag['step_seconds'].value,
        step_batch=flag['step_batch'].value or hw.step_batch,
        step_variant=flag['variant'].value or hw.step_variant,
        sources=hw.sources + f' Overridden: one-device step '
        f'{flag["step_seconds"].value} s (--step_seconds).')
  spec_variant = flag['variant'].value or hw.step_variant
  spec = models.VARIANTS[spec_variant]
  modes = [m for m in flag['modes'].value.split(',') if m]
  for mode in modes:
    if mode not in parallel.MODES:
      raise ValueError(f'--modes: unknown {mode!r}; choose from '
                       f'{parallel.MODES}')
  counts = _ints(flag['devices'].value, 'devices')
  rows, skipped = projection.plan(
      hw, modes, counts, comms.net_shape(spec), spec,
      projection.device_rate(hw), flag['batch_per_device'].value,
      flag['global_batch'].value)
  for reason in skipped:
    print(f'skipped: {reason}', file=sys.stderr)
  if not rows:
    raise ValueError('no valid (mode, devices) pair to project')
  if flag['compile'].value:
    rows = _compiled_rows(rows, hw, spec_variant, projection.device_rate(hw),
                          bool(flag['global_batch'].value))
  for r in rows:
    print(f'source {r.mode} {r.devices}: {r.source}', file=sys.stderr)
  print('\n'.join(projection.lines(rows)))
  text = projection.markdown(rows, hw)
  print('\n' + text)
  if flag['out'].value:
    os.makedirs(flag['out'].value, exist_ok=True)
    with open(os.path.join(flag['out'].value, 'plan.md'), 'w') as f:
      f.write(text + '\n\n![speedup](plan.png)\n')
    figures.plot(rows, hw, os.path.join(flag['out'].value, 'plan.png'))


if __name__ == '__main__':
  cli.run(main, define_flags, required=['hardware'])
