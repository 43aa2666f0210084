"""Where metrics go: TensorBoard, `metrics.jsonl`, and the console.

Only process 0 writes; other processes get a writer that does nothing.
"""

import json
import math
import os
import time
from typing import Any

from absl import logging
import jax


class MetricsWriter:
  """Writes `{name: scalar}` per step as TensorBoard scalars and JSON lines."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self.tensorboard_dir = os.path.join(workdir, 'tensorboard')
    self._tb = None
    if self._active:
      from flax.metrics import tensorboard  # pylint: disable=g-import-not-at-top
      self._tb = tensorboard.SummaryWriter(self.tensorboard_dir)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self._active:
      return
    clean = {k: _plain(v) for k, v in metrics.items()}
    with open(self.jsonl_path, 'a') as f:
      f.write(json.dumps({'step': int(step), **clean}) + '\n')
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
