"""The training loop: resume, step, log, evaluate, save, stop.

`train_and_evaluate` runs one training run from a config and a workdir;
`evaluate_checkpoint` evaluates a saved one. The compiled steps themselves
are in `steps`; what else happens at each evaluation (the towers' kernels in
TensorBoard) comes in as `on_evaluate` hooks from the caller.
"""

import dataclasses
import math
import time
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from alexnet_jax import capture
from alexnet_jax import checkpoint
from alexnet_jax import logs
from alexnet_jax import models
from alexnet_jax import multihost
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax import storage
from alexnet_jax.data import device
from alexnet_jax.data import iterators
from alexnet_jax.data import sources


def evaluate(config: Any, strategy: parallel.Strategy, eval_step: Callable,
             params: Any) -> dict[str, float]:
  """Top-1/top-5 error over the whole validation set, every crop protocol.

  One pass over the validation set: each batch of base images gives the
  centre-crop and (if the step computes it) the 10-crop results.
  """
  shard, shards = strategy.process_batch_shard()
  iterator = iterators.create_eval_iterator(
      config, process_index=shard, process_count=shards)
  shardings = steps.batch_shardings(strategy, device.EVAL_KEYS)
  sums = {}
  for batch in iterator:
    out = eval_step(params, iterators.to_global(batch, shardings))
    sums = {k: sums.get(k, 0.0) + v for k, v in out.items()}
  count = float(sums.get('count', 0))
  if not count:
    raise ValueError(f'no decodable evaluation image in {config.dataset} '
                     f'({iterator.num_skipped} skipped)')
  results = {}
  for suffix in ('', '_10crop'):
    for k in (1, 5):
      if f'top{k}{suffix}' in sums:
        results[f'eval/top{k}_error{suffix}'] = float(
            sums[f'top{k}{suffix}']) / count
  results['eval/num_examples'] = int(count)
  results['data/skipped_eval'] = int(iterator.num_skipped)
  return results


def _eval_step(config, spec, strategy, params) -> Callable:
  return steps.make_eval_step(spec, strategy, params,
                              device.Normalization.from_config(config),
                              ten_crop=config.eval_ten_crop)


def check_config(config: Any, strategy: parallel.Strategy,
                 spec: models.AlexNetSpec) -> None:
  """Start-up checks that need the data source; one-line errors."""
  for key in ('batch_size', 'eval_batch_size'):
    size = config[key]
    if size % strategy.data_shards or size % jax.process_count():
      raise ValueError(
          f'config.{key}: {size} does not split over the '
          f'{strategy.data_shards}-way data axis and '
          f'{jax.process_count()} processes')
  device.Normalization.from_config(config)  # One-line errors, before data.
  classes = sources.num_classes(config)
  if classes != spec.num_classes:
    raise ValueError(f'config.model.num_classes: the model has '
                     f'{spec.num_classes} classes but {config.dataset} has '
                     f'{classes}')
  for key in ('eval_every_steps', 'checkpoint_every_steps', 'log_every_steps'):
    if config[key] < 1:
      raise ValueError(f'config.{key}: must be at least 1, not {config[key]}')


def prepare_workdir(workdir: str) -> None:
  """Creates `workdir` and checks that this process can write in it."""
  try:
    storage.makedirs(workdir)
    probe = storage.join(workdir, f'.writable.{jax.process_index()}')
    storage.write_text(probe, 'ok')
    storage.remove(probe)
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f'--workdir: {workdir} is not writable '
                     f'({checkpoint.one_line(error)})') from None


def total_steps(config: Any) -> tuple[int, float]:
  """(number of train steps, steps per epoch)."""
  steps_per_epoch = sources.num_train_examples(config) / (
      config.batch_size)
  if config.num_train_steps > 0:
    return config.num_train_steps, steps_per_epoch
  return math.ceil(config.num_epochs * steps_per_epoch), steps_per_epoch


def _gather_over_processes(state: dict[str, int]) -> list[dict[str, int]]:
  """Every process's iterator state, indexed by process (ints only)."""
  if jax.process_count() == 1:
    return [state]
  keys = sorted(state)
  rows = multihost_utils.process_allgather(
      np.array([state[k] for k in keys], np.int64))
  return [dict(zip(keys, map(int, row))) for row in rows]


def _skipped_in_all_shards(state: dict[str, int],
                           strategy: parallel.Strategy) -> int:
  """Undecodable files skipped so far, each input shard counted once.

  Processes that hold the same batch rows read (and skip) the same files.
  """
  readers_per_shard = jax.process_count() // strategy.process_batch_shard()[1]
  return sum(s['num_skipped'] for s in _gather_over_processes(state)
             ) // readers_per_shard


# Marks a data position in the global order, one for all processes.
GLOBAL_ORDER = 'global/1'


def _data_position(config: Any, train_iter: iterators.TrainIterator,
                   state: dict[str, int],
                   strategy: parallel.Strategy) -> list[dict[str, Any]]:
  """What a checkpoint stores of the data position: in a global order one
  position, with what it is a position in; else every process's own."""
  if not train_iter.global_order:
    return _gather_over_processes(state)
  return [{'order': GLOBAL_ORDER, 'epoch': state['epoch'],
           'next_index': state['next_index'],
           'num_skipped': _skipped_in_all_shards(state, strategy),
           'batch_size': config.batch_size,
           'num_examples': train_iter.epoch_size, 'seed': config.seed,
           'dataset': config.dataset}]


def _position_changes(config: Any, train_iter: iterators.TrainIterator,
                      saved: dict[str, Any]) -> list[str]:
  """What differs between a saved global position and this run."""
  now = {'dataset': config.dataset, 'num_examples': train_iter.epoch_size,
         'batch_size': config.batch_size, 'seed': config.seed}
  names = {'dataset': 'dataset', 'num_examples': 'training examples',
           'batch_size': 'global batch', 'seed': 'seed'}
  return [f'{names[k]} {saved[k]} -> {now[k]}' for k in now
          if saved[k] != now[k]]


def _why_not_exact(config: Any, train_iter: iterators.TrainIterator,
                   saved: list[dict[str, Any]]) -> str | None:
  """Why the saved data position cannot continue exactly here, or None."""
  is_global = saved[0].get('order') == GLOBAL_ORDER
  if train_iter.global_order and is_global:
    changed = _position_changes(config, train_iter, saved[0])
    return (f'the data changed since the checkpoint ({"; ".join(changed)})'
            if changed else None)
  if train_iter.global_order:
    return (f'the checkpoint holds {len(saved)} per-process data positions '
            'of an older version, whose order this version does not '
            'continue')
  if is_global:
    return (f'the checkpoint\'s data position is one in the global order of '
            f'{saved[0]["dataset"]}, which {config.dataset} does not have')
  if len(saved) != jax.process_count():
    return (f'the checkpoint was written by {len(saved)} processes, not '
            f'{jax.process_count()}: {config.dataset} gives each process a '
            'share of its own, so the shares differ')
  return None


def _restore_data_position(config: Any, train_iter: iterators.TrainIterator,
                           saved: list[dict[str, Any]],
                           first_shard: bool) -> None:
  """Continues from the saved data position, on any number of processes
  where the order is global.

  Where the position cannot continue exactly it stops with one line, or,
  with config.accept_data_change, restarts the saved epoch and says so; a
  position of an older version's order restarts its epoch and says so.
  `first_shard`: whether this process reads input shard 0, which carries
  the count of skipped files of a global position.
  """
  epoch = int(saved[0]['epoch'])
  why = _why_not_exact(config, train_iter, saved)
  if why is None and train_iter.global_order:
    train_iter.set_state({'epoch': epoch, 'next_index': saved[0]['next_index'],
                          'num_skipped': (saved[0]['num_skipped']
                                          if first_shard else 0)})
    return
  if why is None:
    train_iter.set_state(saved[jax.process_index()])
    return
  older = train_iter.global_order and 'order' not in saved[0]
  if not (config.accept_data_change or older):
    raise ValueError(
        f'resume: {why}; the data position cannot continue exactly. Set '
        '--config.accept_data_change=true to restart epoch '
        f'{epoch} with this run\'s data, or resume with the saved settings')
  logs.console(f'{why}: the input restarts epoch {epoch} from its start')
  train_iter.set_state({'epoch': epoch, 'next_index': 0, 'num_skipped': 0})


# Called after each evaluation with (writer, step, params, config), on every
# process: what else a run records about its parameters.
EvalHook = Callable[[logs.MetricsWriter, int, Any, Any], None]


@dataclasses.dataclass(frozen=True)
class Hooks:
  """What else a run records, called on every process.

  on_evaluate: after each evaluation.
  on_profiled: when the window of `config.profile_steps` has been traced.
  """
  on_evaluate: tuple[EvalHook, ...] = ()
  on_profiled: capture.ProfileHook | None = None


def train_and_evaluate(config: Any, workdir: str,
                       on_evaluate: tuple[EvalHook, ...] = (),
                       on_profiled: capture.ProfileHook | None = None
                       ) -> dict[str, float]:
  """Trains per `config`, resuming from `workdir` if it holds checkpoints.

  `on_evaluate` hooks run after each evaluation; `on_profiled` when the
  window of `config.profile_steps` has been traced.

  Returns the last evaluation's metrics.
  """
  spec = parallel.spec_of(config)
  strategy = parallel.strategy_from_config(config)
  with jax.set_mesh(strategy.mesh):
    check_config(config, strategy, spec)
    prepare_workdir(workdir)
    run = _Run.start(config, workdir, spec, strategy,
                     Hooks(on_evaluate, on_profiled))
    return run.train()


def _due(done: int, every: int, num_steps: int) -> bool:
  """Whether work done every `every` steps falls after step `done`; the
  last step always gets it."""
  return done % every == 0 or done == num_steps


@dataclasses.dataclass
class _Run:
  """One training run, whole once `start` has built it: its state resumed
  from the workdir, the compiled steps, the data, checkpoints and metrics,
  and the work the schedule puts between steps."""
  config: Any
  strategy: parallel.Strategy
  hooks: Hooks
  num_steps: int
  state: steps.TrainState
  train_step: Callable
  eval_step: Callable
  dropout_rng: jax.Array
  policy: optim.LearningRatePolicy
  train_iter: iterators.TrainIterator
  mngr: Any  # orbax's CheckpointManager.
  meta: dict[str, Any]
  writer: logs.MetricsWriter
  progress: logs.Progress
  capture: capture.TrainCapture
  data_state: dict[str, int] = dataclasses.field(default_factory=dict)
  window: '_Window' = dataclasses.field(default_factory=lambda: _Window())
  pending: tuple[int, Any] | None = None  # Read one step late, async.
  last_eval: dict[str, float] = dataclasses.field(default_factory=dict)

  @classmethod
  def start(cls, config: Any, workdir: str, spec: models.AlexNetSpec,
            strategy: parallel.Strategy, hooks: Hooks) -> '_Run':
    """The run, continued from the latest readable checkpoint in `workdir`
    if there is one: its parameters, optimizer state, data position and
    learning-rate policy."""
    num_steps, steps_per_epoch = total_steps(config)
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    tx = optim.create_optimizer(config.optimizer,
                                parallel.abstract_params(spec))
    state = steps.create_train_state(spec, strategy, tx, init_rng)
    policy = optim.LearningRatePolicy.from_config(config.optimizer,
                                                  steps_per_epoch)
    shard, shards = strategy.process_batch_shard()
    train_iter = iterators.create_train_iterator(
        config, process_index=shard, process_count=shards)
    mngr = checkpoint.manager(storage.join(workdir, 'checkpoints'),
                              config.keep_checkpoints)
    state = _resume(config, spec, strategy, state, mngr, train_iter, policy)
    writer = logs.MetricsWriter(workdir, resumed_step=int(state.step))
    logs.console(f'{config.mode} mode on mesh {dict(strategy.mesh.shape)}; '
                 f'TensorBoard: {writer.tensorboard_dir}; checkpoints: '
                 f'{mngr.directory}; metrics: {writer.jsonl_path}')
    return cls(
        config=config, strategy=strategy, hooks=hooks, num_steps=num_steps,
        state=state,
        train_step=steps.make_train_step(
            spec, strategy, tx, state,
            device.Normalization.from_config(config)),
        eval_step=_eval_step(config, spec, strategy, state.params),
        dropout_rng=dropout_rng, policy=policy, train_iter=train_iter,
        mngr=mngr,
        meta=checkpoint.spec_meta(spec, input=config.input.to_dict(),
                                  dataset=config.dataset),
        writer=writer, progress=logs.Progress(int(state.step), num_steps),
        capture=capture.TrainCapture.from_config(
            config, workdir, writer.tensorboard_dir, hooks.on_profiled),
        data_state=train_iter.get_state())

  def train(self) -> dict[str, float]:
    """Steps up to `num_steps`, logging, evaluating and saving as the
    config schedules; SIGTERM or SIGINT on any process saves one step,
    the same on every process, and returns early. The non-finite stops
    need no such agreement: the loss and the parameter check are
    replicated values, the same on every process. Returns the last
    evaluation's metrics."""
    config, num_steps = self.config, self.num_steps
    batches = iterators.prefetch_to_device(
        self.train_iter, config.input.prefetch_batches,
        steps.batch_shardings(self.strategy, device.TRAIN_KEYS))
    with multihost.StopRequest(self.strategy) as stop, batches, self.capture:
      for step in range(int(self.state.step), num_steps):
        learning_rate = self.policy(step)
        self._step(step, batches, learning_rate)
        done = step + 1
        self.capture.step(done, self.state, num_steps)
        stop_signal = stop.agreed()
        if _due(done, config.log_every_steps, num_steps):
          self._log_train(done, learning_rate)
        if _due(done, config.eval_every_steps, num_steps):
          self._evaluate(done)
        saved = _due(done, config.checkpoint_every_steps, num_steps)
        if saved:
          self._save(done)
        if stop_signal and done < num_steps:
          self._stop(done, stop_signal, saved)
          return self.last_eval
    checkpoint.wait_until_finished(self.mngr)
    self.writer.close()
    return self.last_eval

  def _step(self, step: int, batches: Any, learning_rate: float) -> None:
    """One train step on the next batch; its metrics are read a step late,
    so the host does not wait for the devices."""
    waited = time.time()
    batch, self.data_state, _ = next(batches)
    self.window.data_wait += time.time() - waited
    self.state, metrics = self.train_step(self.state, batch, learning_rate,
                                          self.dropout_rng)
    self._flush()
    self.pending = (step + 1, metrics)

  def _flush(self) -> None:
    """Adds the pending step's metrics to the window (waiting for them)."""
    if self.pending is not None:
      done, metrics = self.pending
      self.pending = None
      loss = self.window.add(metrics)
      self._stop_unless_finite(done, loss, 'non-finite training loss '
                               f'({loss})')

  def _stop_unless_finite(self, done: int, finite: bool | float,
                          what: str) -> None:
    """Stops the run at step `done` (as metrics.jsonl numbers it) unless
    `finite` (a value, or whether one is); the latest checkpoint, saved
    before, is the one to resume from."""
    if isinstance(finite, float):
      finite = math.isfinite(finite)
    if finite:
      return
    checkpoint.wait_until_finished(self.mngr)
    raise FloatingPointError(
        f'{what} at step {done}; stopped. The latest checkpoint (step '
        f'{self.mngr.latest_step()}) holds the last good parameters.')

  def _log_train(self, done: int, learning_rate: float) -> None:
    """The window's train metrics to TensorBoard, metrics.jsonl and the
    console."""
    self._flush()
    per_step, eta = self.progress.report(done)
    summary = self.window.summary(per_step, self.config.batch_size)
    summary.update({'train/learning_rate': learning_rate,
                    'data/skipped_train': _skipped_in_all_shards(
                        self.data_state, self.strategy)})
    self.writer.write(done, summary)
    logs.console(
        f'step {done}/{self.num_steps}  loss '
        f'{summary["train/loss"]:.4f}  top1 err '
        f'{summary["train/top1_error"]:.3f}  '
        f'{summary["perf/images_per_sec"]:.0f} img/s  data wait '
        f'{summary["perf/data_wait_fraction"]:.0%}  ETA '
        f'{logs.format_duration(eta)}')

  def _evaluate(self, done: int) -> None:
    """Validation error (which may lower the learning rate) and what the
    `on_evaluate` hooks record, logged."""
    self._flush()
    self.last_eval = evaluate(self.config, self.strategy, self.eval_step,
                              self.state.params)
    if self.policy.observe(self.last_eval['eval/top1_error']):
      logs.console(f'validation error stopped improving: learning rate '
                   f'now {self.policy(done):g}')
    self.writer.write(done, self.last_eval)
    logs.console(f'eval at step {done}: ' + '  '.join(
        f'{k.split("/")[1]} {v:.4f}' if isinstance(v, float)
        else f'{k.split("/")[1]} {v}' for k, v in self.last_eval.items()))
    for hook in self.hooks.on_evaluate:
      hook(self.writer, done, self.state.params, self.config)
    self.progress.report(done)  # Evaluation time is not training time.

  def _save(self, step: int) -> None:
    """A checkpoint at `step`: parameters, optimizer state, the data
    position and the learning-rate policy."""
    self._flush()
    # A finite loss can still be followed by an update that overflows.
    self._stop_unless_finite(step, steps.all_finite(self.state.params),
                             'non-finite parameters')
    checkpoint.save(self.mngr, step, params=self.state.params,
                    opt_state=self.state.opt_state, meta=self.meta,
                    progress={'data': _data_position(
                        self.config, self.train_iter, self.data_state,
                        self.strategy),
                              'lr_policy': self.policy.state_dict()})

  def _stop(self, step: int, signal_name: str, saved: bool) -> None:
    """Saves `step` (unless the schedule just did) and closes the logs."""
    if not saved:
      self._save(step)
    checkpoint.wait_until_finished(self.mngr)
    logs.console(f'{signal_name} at step {step}: checkpoint saved in '
                 f'{self.mngr.directory}/{step}; run the same command to '
                 'resume')
    self.writer.close()


def _resume(config: Any, spec: models.AlexNetSpec,
            strategy: parallel.Strategy, state: steps.TrainState, mngr: Any,
            train_iter: iterators.TrainIterator,
            policy: optim.LearningRatePolicy) -> steps.TrainState:
  """`state` from the latest readable checkpoint, if there is one, with
  the data iterator and learning-rate policy where it left them."""
  latest = checkpoint.restore_latest_readable(
      mngr, spec, params_like=state.params, opt_state_like=state.opt_state)
  if latest is None:
    return state
  step, restored = latest
  _restore_data_position(config, train_iter, restored['progress']['data'],
                         strategy.process_batch_shard()[0] == 0)
  policy.load_state_dict(restored['progress']['lr_policy'])
  logs.console(f'resumed from {mngr.directory}/{step}')
  return steps.TrainState(
      jax.device_put(jnp.int32(step), strategy.replicated()),
      restored['params'], restored['opt_state'])


class _Window:
  """Train metrics accumulated between two console/TensorBoard reports."""

  def __init__(self):
    self.sums, self.steps, self.data_wait = {}, 0, 0.0

  def add(self, metrics: dict) -> float:
    """Adds one step's metrics; returns its loss."""
    values = {k: float(v) for k, v in metrics.items()}
    for k, v in values.items():
      self.sums[k] = self.sums.get(k, 0.0) + v
    self.steps += 1
    return values['train/loss']

  def summary(self, per_step: float, batch_size: int) -> dict[str, float]:
    out = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
    elapsed = per_step * max(self.steps, 1)
    out.update({'perf/step_time': per_step,
                'perf/images_per_sec': batch_size / per_step,
                'perf/data_wait_fraction': min(self.data_wait / elapsed, 1.0)})
    self.sums, self.steps, self.data_wait = {}, 0, 0.0
    return out


def evaluate_checkpoint(config: Any, path: str,
                        workdir: str | None = None) -> dict[str, float]:
  """Evaluation only: restores params from `path` onto the configured mesh.

  The checkpoint may come from any execution mode or device count.
  """
  spec = parallel.spec_of(config)
  strategy = parallel.strategy_from_config(config)
  with jax.set_mesh(strategy.mesh):
    return _evaluate_checkpoint(config, path, workdir, spec, strategy)


def _evaluate_checkpoint(config, path, workdir, spec, strategy):
  check_config(config, strategy, spec)
  ckpt_dir, step = checkpoint.locate(path)
  mngr = checkpoint.manager(ckpt_dir)
  found = checkpoint.restore_latest_readable(
      mngr, spec, params_like=parallel.abstract_params(spec, strategy),
      step=step)
  if found is None:
    raise ValueError(f'--checkpoint: no complete checkpoint in {ckpt_dir}')
  step, params = found[0], found[1]['params']
  results = evaluate(config, strategy,
                     _eval_step(config, spec, strategy, params), params)
  if workdir:
    prepare_workdir(workdir)
    logs.MetricsWriter(workdir).write(step, results)
  logs.console(f'checkpoint {ckpt_dir}/{step}: ' + '  '.join(
      f'{k} {v}' for k, v in results.items()))
  return results

