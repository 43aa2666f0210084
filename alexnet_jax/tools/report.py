"""Compares training runs side by side: a Markdown table and plots.

  python -m alexnet_jax.tools.report DIR [DIR ...] --out REPORT_DIR \
      [--intro TEXT]
  python -m alexnet_jax.tools.report --scaling=h100_sxm8 --out REPORT_DIR \
      [--cost_json=A.json,B.json]

Each DIR is a workdir of `alexnet_jax.main`: `metrics.jsonl` and
`config.json` (both written by process 0), and optionally `cost.json` from
`python -m alexnet_jax.tools.cost --json_out` (communication and memory per
device, which training itself does not measure), and optionally
`profile.json` from `python -m alexnet_jax.tools.profile --json_out` or a run
with `config.profile_steps` (measured compute and collective time per step,
tabulated beside cost's bytes and `plan`'s projected step on the measured
hardware, where plan has a preset for it). Writes REPORT_DIR/README.md
and three PNGs: eval error against step and against training wall time
(evaluation excluded), and training throughput.
"""

import dataclasses
import statistics
from typing import Any

from absl import app
from absl import flags
import ml_collections

from alexnet_jax import aot
from alexnet_jax import cli
from alexnet_jax import hardware
from alexnet_jax import logs
from alexnet_jax import models
from alexnet_jax import storage
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import projection
from alexnet_jax.analysis import scaling

ERROR = 'eval/top1_error'


@dataclasses.dataclass
class Run:
  """One workdir's figures."""
  name: str
  config: dict[str, Any]
  lines: list[dict[str, Any]]
  cost: dict[str, Any] | None
  profile: dict[str, Any] | None = None

  def train_lines(self) -> list[dict[str, Any]]:
    return [line for line in self.lines if 'train/loss' in line]

  def eval_lines(self) -> list[dict[str, Any]]:
    return [line for line in self.lines if ERROR in line]

  def images_per_sec(self) -> float | None:
    """Median over the logged windows, the first (compilation) excluded."""
    rates = [line['perf/images_per_sec'] for line in self.train_lines()[1:]]
    return statistics.median(rates) if rates else None

  def wall_time_at(self) -> dict[int, float]:
    """Step -> seconds of training so far (evaluation time excluded)."""
    elapsed, last, out = 0.0, 0, {}
    for line in self.train_lines():
      elapsed += line['perf/step_time'] * (line['step'] - last)
      last = line['step']
      out[last] = elapsed
    return out

  def measured(self, key: str) -> float | None:
    return (self.cost or {}).get('measured', {}).get(key)


def load_run(workdir: str) -> Run:
  """Reads one workdir; fails with the path when a required file is gone."""
  workdir = storage.check_location(workdir, 'workdir')
  lines = logs.read_metrics(storage.join(workdir, 'metrics.jsonl'))
  config = storage.read_json(storage.join(workdir, 'config.json'))
  optional = {}
  for name in ('cost', 'profile'):
    path = storage.join(workdir, f'{name}.json')
    optional[name] = storage.read_json(path) if storage.exists(path) else None
  return Run(storage.basename(workdir), config, lines, optional['cost'],
             optional['profile'])


def _num(value: float | None, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def _mib(value: float | None) -> str:
  return '-' if value is None else f'{value / 2**20:,.1f}'


def table(runs: list[Run]) -> str:
  """The Markdown comparison table, one row per run."""
  header = ('| run | mode | devices | batch | images/s | final top-1 err | '
            'best top-1 err | final top-5 err | collective MiB/step | '
            'peak MiB/device |')
  rows = [header, '|' + '---|' * header.count(' | ') + '---|']
  for run in runs:
    evals = run.eval_lines()
    final = evals[-1] if evals else {}
    best = min((line[ERROR] for line in evals), default=None)
    rows.append(
        f'| {run.name} | {run.config["mode"]} | {run.config["num_devices"]} '
        f'| {run.config["batch_size"]} | {_num(run.images_per_sec(), ".1f")} '
        f'| {_num(final.get(ERROR), ".3f")} | {_num(best, ".3f")} '
        f'| {_num(final.get("eval/top5_error"), ".3f")} '
        f'| {_mib(run.measured("collective_bytes"))} '
        f'| {_mib(run.measured("peak_memory_bytes"))} |')
  return '\n'.join(rows)


def projected_step(run: Run) -> float | None:
  """`plan`'s step for the run's mode, devices and batch on the hardware
  it was profiled on, or None where plan has no preset for it."""
  kind = (run.profile or {}).get('device_kind') or run.measured('device_kind')
  preset = hardware.PRESET_OF_DEVICE_KIND.get(kind)
  if preset is None or 'model' not in run.config:
    return None
  net = comms.net_shape(models.spec_from_config(
      ml_collections.ConfigDict(run.config['model'])))
  hw = hardware.HARDWARE[preset]
  return projection.project(run.config['mode'], run.config['num_devices'],
                            run.config['batch_size'], net, hw,
                            projection.device_rate(hw))['step_s']


def _ms(seconds: float | None) -> str:
  return '-' if seconds is None else f'{seconds * 1e3:.2f}'


def profile_table(runs: list[Run]) -> str | None:
  """Measured time per step per device beside the cost model's bytes and
  plan's projection, for the runs with a profile.json; None if none has."""
  profiled = [run for run in runs if run.profile]
  if not profiled:
    return None
  header = ('| run | mode | devices | profiled on | step ms | compute ms | '
            'collective ms | exposed | collective MiB/step | '
            'projected step ms (plan) |')
  rows = [header, '|' + '---|' * header.count(' | ') + '---|']
  for run in profiled:
    p = run.profile
    rows.append(
        f'| {run.name} | {run.config["mode"]} | {run.config["num_devices"]} '
        f'| {p.get("device_kind", "-")} | {_ms(p["step_seconds"])} '
        f'| {_ms(p["compute_seconds"])} | {_ms(p["collective_seconds"])} '
        f'| {p["exposed_collective_fraction"]:.1%} '
        f'| {_mib(run.measured("collective_bytes"))} '
        f'| {_ms(projected_step(run))} |')
  return '\n'.join(rows)


def plot(runs: list[Run], out_dir: str) -> list[str]:
  """Writes the PNGs; returns their file names."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  files = []
  for name, xlabel, x_of in (
      ('eval_error_vs_step.png', 'training step', lambda run, s: s),
      ('eval_error_vs_time.png', 'training wall time, s (eval excluded)',
       lambda run, s: run.wall_time_at().get(s))):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=plt.get_cmap('tab20').colors)
    for run in runs:
      points = [(x_of(run, line['step']), line[ERROR])
                for line in run.eval_lines()]
      points = [(x, y) for x, y in points if x is not None]
      if points:
        ax.plot(*zip(*points), marker='o', label=run.name)
    ax.set(xlabel=xlabel, ylabel='eval top-1 error')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with storage.writer(storage.join(out_dir, name)) as f:
      fig.savefig(f, format='png', dpi=100)
    plt.close(fig)
    files.append(name)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  names = [run.name for run in runs]
  ax.barh(names, [run.images_per_sec() or 0 for run in runs])
  ax.set(xlabel='training images/s (median over logged windows)')
  ax.invert_yaxis()
  fig.tight_layout()
  with storage.writer(storage.join(out_dir, 'images_per_sec.png')) as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)
  return files + ['images_per_sec.png']


def write_report(workdirs: list[str], out_dir: str, intro: str = '') -> str:
  """Writes README.md and the plots into `out_dir`; returns the Markdown."""
  runs = [load_run(w) for w in workdirs]
  out_dir = storage.check_location(out_dir, '--out')
  storage.makedirs(out_dir)
  images = plot(runs, out_dir)
  measured = profile_table(runs)
  text = '\n\n'.join(
      ['# Training runs side by side', *([intro] if intro else []),
       table(runs),
       'images/s: median of the logged training windows after the first. '
       'Errors: center crop on the validation split. Collective bytes: '
       'received per device per step (ring algorithms), and peak memory per '
       'device, both read from the compiled train step by '
       '`python -m alexnet_jax.tools.cost` (cost.json).',
       *([measured, 'Measured per step per device, averaged over the traced '
          'steps (`python -m alexnet_jax.tools.profile`, profile.json): the '
          "device's step, the time in which compute runs, in which a "
          'collective runs, and the share of the step in which a collective '
          'runs and no compute does. Projected: `alexnet_jax.tools.plan` on '
          'the preset of the profiled hardware, where it has one.']
         if measured else []),
       *[f'![{name[:-4]}]({name})' for name in images]]) + '\n'
  storage.write_text(storage.join(out_dir, 'README.md'), text)
  return text


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.report`."""
  return {'out': flags.DEFINE_string('out', None, 'Report directory.'),
          'intro': flags.DEFINE_string(
              'intro', '', 'A paragraph to put above the table.'),
          'scaling': flags.DEFINE_list(
              'scaling', [], 'Write the scaling study for these hardware '
              'presets of alexnet_jax.tools.plan instead (no workdirs).'),
          'cost_json': flags.DEFINE_list(
              'cost_json', [], 'With --scaling: cost --topology --json_out '
              'files of TPU slices to tabulate.')}


def main(argv, flag: dict[str, Any]) -> None:
  if flag['scaling'].value:
    unknown = set(flag['scaling'].value) - set(hardware.HARDWARE)
    if unknown:
      raise app.UsageError(f'--scaling: {sorted(unknown)} unknown; choose '
                           f'from {sorted(hardware.HARDWARE)}')
    aot.jax_on_cpu()
    print(scaling.write(flag['scaling'].value, flag['out'].value,
                        flag['cost_json'].value, intro=flag['intro'].value))
    return
  if len(argv) < 2:
    raise app.UsageError('give at least one workdir')
  print(write_report(argv[1:], flag['out'].value, flag['intro'].value))


if __name__ == '__main__':
  cli.run(main, define_flags, required=['out'])
