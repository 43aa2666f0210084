"""The scaling study: which execution mode wins where, and from what batch.

Written by `python -m alexnet_jax.tools.report --scaling=HW1,HW2 --out=DIR
[--cost_json=A.json,B.json]`. Per hardware preset, parts labelled by where
their figures come from:

  projected  every mode on 1-64 GPUs (1-256 chips of a TPU slice) with
             `plan`, at a fixed per-device batch and at a fixed global
             batch; the winner at each device count, and the crossover: the
             smallest global batch at which data parallelism overtakes the
             best model-parallel mode.
  compiled   train steps compiled for TPU slices (`cost --topology
             --json_out`): collective bytes and peak memory per chip, read
             off the compiled programs, beside the projected images/s of
             the same step (the TPU compiler's own time estimate is
             unusable for the full-size net).
"""

import json
import os
import re

from alexnet_jax import hardware
from alexnet_jax import models
from alexnet_jax.analysis import figures
from alexnet_jax.analysis import projection

MODES = ('data', 'tower', 'data_tower', 'hybrid', 'hybrid_2d')
DEVICES = (1, 2, 4, 8, 16, 32, 64)
# A v5e slice grows to 256 chips on one ICI torus.
STUDY_DEVICES = {'tpu_v5e': DEVICES + (128, 256)}
MODEL_PARALLEL = ('tower', 'data_tower', 'hybrid', 'hybrid_2d')


# The two-tower modes run the paper's net; the hybrids the one-tower net
# they were made for (the paper's 500 classes per tower split at most 4
# ways). Their training FLOPs differ by 0.2%.
VARIANT = {'data': 'paper', 'tower': 'paper', 'data_tower': 'paper',
           'hybrid': 'owt', 'hybrid_2d': 'owt'}


def _rows(hw: hardware.Hardware, modes=MODES, devices=DEVICES,
          **batch) -> list[projection.Row]:
  """Projected rows of every mode that can run, each on its own net."""
  rate = projection.device_rate(hw)
  rows = []
  for mode in modes:
    variant = VARIANT[mode]
    rows += projection.plan(hw, [mode], list(devices),
                            projection.variant_net(variant),
                            models.VARIANTS[variant], rate, **batch)[0]
  return rows


def _table(rows: list[projection.Row]) -> str:
  """Images/s per mode (columns) and device count (rows); best in bold."""
  counts = sorted({r.devices for r in rows})
  head = '| devices | ' + ' | '.join(MODES) + ' | winner |'
  out = [head, '|' + '---|' * (len(MODES) + 2)]
  for n in counts:
    at = {r.mode: r for r in rows if r.devices == n}
    best = max(at.values(), key=lambda r: r.images_per_sec)
    cells = [(f'**{at[m].images_per_sec:,.0f}**' if at[m] is best and n > 1
              else f'{at[m].images_per_sec:,.0f}') if m in at else '-'
             for m in MODES]
    winner = 'one device: all alike' if n == 1 else best.mode
    out.append(f'| {n} | ' + ' | '.join(cells) + f' | {winner} |')
  return '\n'.join(out)


def crossover_batch(hw: hardware.Hardware, devices: int) -> tuple[
    int | None, str | None]:
  """Smallest global batch (powers of two from `devices` to 2^17) at which
  mode data is at least as fast as every model-parallel mode that can run;
  and the model-parallel mode it overtakes there."""
  batch = devices
  while batch <= 2**17:
    rows = {r.mode: r for r in _rows(hw, ('data', *MODEL_PARALLEL),
                                     (devices,), global_batch=batch)}
    rivals = [r for m, r in rows.items() if m != 'data']
    if 'data' in rows and rivals:
      best = max(rivals, key=lambda r: r.images_per_sec)
      if rows['data'].images_per_sec >= best.images_per_sec:
        return batch, best.mode
    batch *= 2
  return None, None


def _compiled_table(paths: list[str], hw: hardware.Hardware) -> str:
  """Bytes and memory of compiled slices, with the projected images/s."""
  out = ['| mode | chips | hosts | global batch | collective MiB/chip/step '
         '(compiled; model) | peak GiB/chip | of HBM | images/s '
         '(projected) |', '|---|---|---|---|---|---|---|---|']
  for path in paths:
    with open(path) as f:
      result = json.load(f)
    m, model = result['measured'], result['analytical']
    projected = [f'{r.images_per_sec:,.0f}' for r in _rows(
        hw, (result['mode'],), (result['devices'],),
        global_batch=result['batch_size'])]
    hosts = next((re.search(r'(\d+) hosts?$', line).group(1)
                  for line in m.get('placement', [])
                  if line.startswith('mesh ')), '-')
    hbm = m.get('device_kind') and m['peak_memory_bytes'] / max(
        1, _hbm(m['device_kind']))
    out.append(f'| {result["mode"]} | {result["devices"]} | {hosts} | '
               f'{result["batch_size"]} | '
               f'{m["collective_bytes"] / 2**20:,.1f}; '
               f'{model["collective_bytes"] / 2**20:,.1f} | '
               f'{m["peak_memory_bytes"] / 2**30:.2f} | {hbm:.1%} | '
               f'{projected[0] if projected else "-"} |')
  return '\n'.join(out)


def _hbm(kind: str) -> int:
  return hardware.HBM_BYTES.get(kind, 0)


def _section(preset: str, out_dir: str, cost_json: list[str],
             batch_per_device: int, global_batch: int) -> list[str]:
  """One preset's tables and plots (written into out_dir)."""
  hw = hardware.HARDWARE[preset]
  devices = STUDY_DEVICES.get(preset, DEVICES)
  fixed_device = _rows(hw, devices=devices, batch_per_device=batch_per_device)
  fixed_global = _rows(hw, devices=devices, global_batch=global_batch)
  plots = {'per-device batch': f'{preset}_per_device_batch.png',
           'global batch': f'{preset}_global_batch.png'}
  images = dict(value='images_per_sec', ylabel='images/s (projected)')
  figures.plot_by_mode(fixed_device,
                       os.path.join(out_dir, plots['per-device batch']),
                       title=f'{hw.name}: {batch_per_device} images per '
                       'device', **images)
  figures.plot_by_mode(fixed_global,
                       os.path.join(out_dir, plots['global batch']),
                       title=f'{hw.name}: global batch {global_batch}',
                       **images)
  crossings = []
  for n in devices[1:]:
    batch, rival = crossover_batch(hw, n)
    crossings.append(f'| {n} | {batch or "beyond 131072"} | {rival or "-"} |')
  parts = [
      f'## {hw.name}',
      '**Projected, not measured**: `alexnet_jax.tools.plan`, from one '
      f'device\'s step and datasheet links. Sources: {hw.sources}',
      f'### Fixed per-device batch ({batch_per_device}), images/s',
      _table(fixed_device),
      f'![per-device batch]({plots["per-device batch"]})',
      f'### Fixed global batch ({global_batch}), images/s',
      _table(fixed_global), f'![global batch]({plots["global batch"]})',
      '### Crossover: the smallest global batch at which data parallelism '
      'is at least as fast as the best model-parallel mode (projected)',
      '| devices | global batch | overtaken mode |\n|---|---|---|\n'
      + '\n'.join(crossings)]
  if cost_json and preset.startswith('tpu_'):
    parts += ['### Compiled for TPU slices (bytes and memory read off the '
              'compiled programs; images/s projected as above)',
              _compiled_table(cost_json, hw)]
  return parts


def write(presets: list[str], out_dir: str, cost_json: list[str],
          batch_per_device: int = 128, global_batch: int = 1024,
          intro: str = '') -> str:
  """Writes out_dir/README.md and two PNGs per preset; returns the text."""
  if cost_json and not any(h.startswith('tpu_') for h in presets):
    raise ValueError('--cost_json: compiled TPU slices need a TPU preset '
                     'in --scaling (tpu_v5e)')
  os.makedirs(out_dir, exist_ok=True)
  parts = [
      '# Which strategy wins where', *([intro] if intro else []),
      'data, tower and data_tower run the paper\'s two-tower net; hybrid and '
      'hybrid_2d the one-tower net they were made for (the paper\'s 500 '
      'classes per tower split at most 4 ways). tower runs only on 2 '
      'devices, hybrid where the FC widths divide; hybrid_2d splits the FC '
      'layers within a node (a TPU host). A dash: the mode cannot run '
      'there.']
  for name in presets:
    parts += _section(name, out_dir, cost_json, batch_per_device,
                      global_batch)
  text = '\n\n'.join(parts) + '\n'
  with open(os.path.join(out_dir, 'README.md'), 'w') as f:
    f.write(text)
  return text
