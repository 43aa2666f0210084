"""Traces of train steps with JAX's profiler: a window of a training run
(`config.profile_steps`) and a number of calls of a step (`tools/profile`).
What the traces hold is read by `analysis.trace`.
"""

import glob
import os
import time
from typing import Any, Callable

import jax

# Called when a run's traced window is complete, on every process, with the
# trace's `.xplane.pb`, the window ('steps 11-15'), the run's facts and
# where process 0 keeps the figures (WORKDIR/profile.json; None elsewhere):
# what else a run records about its profile (analysis.trace.profile_hook).
ProfileHook = Callable[[str, str, dict[str, Any], str | None], None]


def newest_trace(log_dir: str) -> str:
  """The `.xplane.pb` of the latest trace written under `log_dir`."""
  found = glob.glob(os.path.join(log_dir, 'plugins', 'profile', '*',
                                 '*.xplane.pb'))
  if not found:
    raise OSError(f'no trace under {log_dir}/plugins/profile')
  return max(found, key=os.path.getmtime)


def trace_steps(step: Callable[[], None], steps: int,
                log_dir: str) -> tuple[str, list[float]]:
  """Traces `steps` calls of `step` (each blocking) into `log_dir`; returns
  the `.xplane.pb` and each call's wall seconds. A `perfetto_trace.json.gz`
  is written beside it for ui.perfetto.dev."""
  walls = []
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    for i in range(steps):
      with jax.profiler.StepTraceAnnotation('train', step_num=i):
        begin = time.perf_counter()
        step()
        walls.append(time.perf_counter() - begin)
  return newest_trace(log_dir), walls


class TrainCapture:
  """Traces the train steps after step `start` up to step `end` of a run
  (`config.profile_steps`), on every process, without touching its state:
  it only waits for the devices at the window's two edges. Use it as a
  context around the steps."""

  def __init__(self, window: tuple[int, int] | None, log_dir: str,
               json_path: str | None, run: dict[str, Any],
               on_profiled: ProfileHook | None = None):
    self.window, self.log_dir, self.json_path = window, log_dir, json_path
    self.run = run  # Written to profile.json beside the figures.
    self.on_profiled = on_profiled
    self.tracing = False

  def __enter__(self) -> 'TrainCapture':
    return self

  def __exit__(self, *exc) -> None:
    """Stops a trace that a raising step left running, so the profiler is
    free again; that partial trace is written but not analysed."""
    if self.tracing:
      self.tracing = False
      jax.profiler.stop_trace()

  @classmethod
  def from_config(cls, config: Any, workdir: str, tensorboard_dir: str,
                  on_profiled: ProfileHook | None = None) -> 'TrainCapture':
    """Checks `config.profile_steps`; one-line errors."""
    window = config.get('profile_steps')
    if window is not None:
      if (len(window) != 2 or not all(isinstance(s, int) for s in window)
          or not 1 <= window[0] < window[1]):
        raise ValueError(
            f'config.profile_steps: {window!r} is not START,END with 1 <= '
            'START < END (the first step compiles, so START >= 1)')
      window = tuple(window)
    index = jax.process_index()
    log_dir = (tensorboard_dir if index == 0
               else os.path.join(tensorboard_dir, f'process_{index}'))
    return cls(window, log_dir,
               os.path.join(workdir, 'profile.json') if index == 0 else None,
               {'mode': config.mode, 'num_devices': config.num_devices,
                'batch_size': config.batch_size,
                'device_kind': jax.devices()[0].device_kind}, on_profiled)

  def step(self, done: int, state: Any, num_steps: int) -> None:
    """Call after every train step, `done` steps in; `state` is what to
    wait for at the window's edges."""
    if self.window is None:
      return
    start, end = self.window
    if done == start and done < num_steps:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.log_dir, create_perfetto_trace=True)
      self.tracing = True
    elif self.tracing and done in (end, num_steps):
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.tracing = False
      if self.on_profiled:
        self.on_profiled(newest_trace(self.log_dir),
                         f'steps {start + 1}-{done}', self.run,
                         self.json_path)
