"""Where metrics go: TensorBoard, `metrics.jsonl`, and the console.

Only process 0 writes; other processes get a writer that does nothing.
"""

import json
import math
import time
from typing import Any

from absl import logging
import jax

from alexnet_jax import storage


class MetricsWriter:
  """Writes `{name: scalar}` per step as TensorBoard scalars and JSON lines.

  `metrics.jsonl` is rewritten whole at every write (a bucket has no
  append), and a resumed run starts from the lines up to the step it
  resumed from: the lines the stopped run wrote after its last checkpoint
  are written again by this one, once.
  """

  def __init__(self, workdir: str, resumed_step: int | None = None):
    self._active = jax.process_index() == 0
    self.jsonl_path = storage.join(workdir, 'metrics.jsonl')
    self.tensorboard_dir = storage.join(workdir, 'tensorboard')
    self._tb, self._lines = None, []
    if self._active:
      from flax.metrics import tensorboard  # pylint: disable=g-import-not-at-top
      if storage.exists(self.jsonl_path):
        self._lines = [json.dumps(line) for line in read_metrics(
            self.jsonl_path) if resumed_step is None
                       or line['step'] <= resumed_step]
      self._tb = tensorboard.SummaryWriter(self.tensorboard_dir)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self._active:
      return
    clean = {k: _plain(v) for k, v in metrics.items()}
    self._lines.append(json.dumps({'step': int(step), **clean}))
    storage.write_text(self.jsonl_path, '\n'.join(self._lines) + '\n')
    for name, value in clean.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.scalar(name, value, step)
    self._tb.flush()

  def image(self, step: int, name: str, image: Any) -> None:
    """One [H, W, 3] uint8 image as a TensorBoard image summary."""
    if not self._active:
      return
    self._tb.image(name, image, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The lines of a `metrics.jsonl`, each step's once.

  Blank and cut-off lines are left out. Files written before runs rewrote
  them on resume may repeat the steps after a checkpoint: a line at an
  earlier step than the one before it, or at the same step with the same
  kind of figures, starts a resumed run, whose lines replace those from
  that step on. So steps never go back.
  """
  lines = []
  for text in storage.read_text(path).splitlines():
    line = _metrics_line(text)
    if line is None:
      continue
    if lines and (line['step'] < lines[-1]['step'] or (
        line['step'] == lines[-1]['step']
        and set(line) & set(lines[-1]) - {'step'})):
      lines = [kept for kept in lines if kept['step'] < line['step']]
    lines.append(line)
  return lines


def _metrics_line(text: str) -> dict[str, Any] | None:
  """One line of metrics.jsonl, or None for a blank or cut-off line (an
  older run killed while it appended)."""
  try:
    line = json.loads(text)
  except ValueError:
    return None
  if not isinstance(line, dict) or not isinstance(line.get('step'), int):
    return None
  return line


def _plain(value: Any) -> Any:
  if hasattr(value, 'item'):
    value = value.item()
  return value


def console(message: str) -> None:
  """A line for the person watching, from process 0 only."""
  if jax.process_index() == 0:
    logging.info(message)
    print(message, flush=True)


def run_line(config: Any, config_file: str, workdir: str | None, *,
             eval_only: bool = False, checkpoint: str | None = None) -> str:
  """What a run of `main` is, as its first line: the config file, the mode,
  the devices and processes, the dataset, the global batch and the steps
  (for an evaluation, the checkpoint), and the workdir."""
  devices = jax.devices()
  count = (str(len(devices)) if config.num_devices == len(devices)
           else f'{config.num_devices} of {len(devices)}')
  processes = jax.process_count()
  if eval_only:
    work = (f'evaluate {checkpoint or "the latest checkpoint"}, global '
            f'batch {config.eval_batch_size}')
  else:
    steps = (f'{config.num_train_steps} steps' if config.num_train_steps > 0
             else f'{config.num_epochs} epochs')
    work = f'train {steps}, global batch {config.batch_size}'
  line = (f'{config_file}: {config.mode} mode on {count} '
          f'{devices[0].device_kind} devices, {processes} '
          f'process{"es" if processes > 1 else ""}; dataset {config.dataset}; '
          f'{work}')
  return line + (f'; workdir {workdir}' if workdir else '')


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


class Progress:
  """Steps per second and the ETA, measured over the steps since the last
  report (so compilation and evaluation do not distort the rate)."""

  def __init__(self, first_step: int, total_steps: int):
    self.total_steps = total_steps
    self._last_step, self._last_time = first_step, time.time()

  def report(self, step: int) -> tuple[float, float]:
    """(seconds per step since the last report, ETA in seconds)."""
    now = time.time()
    per_step = (now - self._last_time) / max(step - self._last_step, 1)
    self._last_step, self._last_time = step, now
    return per_step, per_step * (self.total_steps - step)
