"""Checkpoints with orbax: `WORKDIR/checkpoints/<step>/{params,opt_state,...}`.

Items of a step:
  params     the global parameters (restorable onto any mesh: every mode
             uses the same global shapes).
  opt_state  the optimizer state (training checkpoints only).
  progress   JSON: the data iterator's position and the learning-rate
             policy's state (training checkpoints only).
  meta       JSON: the model spec and input conventions the weights need.

orbax writes a step into a temporary directory and renames it when complete
(in a bucket, which cannot rename, it writes `commit_success.txt` last), so
a run killed mid-save leaves no step that `latest_step` would return. The
directory may be local or gs:// (`storage`).

Two faults are turned into one-line messages instead of a library traceback:
a step that no longer reads back (`restore_latest_readable` moves it aside
to `<step>.damaged-<time>` and takes the previous one) and a full disk
(`save` checks the free space first, except in a bucket, which has no
such limit; `wait_until_finished` reports a save
that ran out of space in the background and removes its partial directory).
"""

import dataclasses
import errno
import gc
import logging
import sys
import time
from typing import Any, Callable, NoReturn, TypeVar
import weakref

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax import logs
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax import storage

_T = TypeVar('_T')

TRAIN_ITEMS = ('params', 'opt_state', 'progress', 'meta')


def manager(directory: str, keep: int = 3) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      storage.check_location(directory, 'checkpoint directory'),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def spec_meta(spec: models.AlexNetSpec, **conventions) -> dict[str, Any]:
  """What a checkpoint records about the network that reads its weights."""
  return {'model': dataclasses.asdict(spec), **conventions}


class CheckpointError(ValueError):
  """A checkpoint could not be read or written; the message is one line."""


# Per manager, the step being saved in the background and its size estimate.
_in_flight: 'weakref.WeakKeyDictionary[ocp.CheckpointManager, tuple]' = (
    weakref.WeakKeyDictionary())

# Bytes a step takes beyond its arrays' data: metadata files, per array.
_OVERHEAD_PER_ARRAY = 4096


def save(mngr: ocp.CheckpointManager, step: int, *, params: Any,
         meta: dict[str, Any], opt_state: Any = None,
         progress: dict[str, Any] | None = None) -> None:
  """Starts an asynchronous save of `step` once the previous one is done.

  Raises CheckpointError, saving nothing, when the previous save failed or
  the checkpoint directory has less free space than the step will take.
  """
  wait_until_finished(mngr)
  needed = checkpoint_bytes(params, opt_state)
  free = storage.free_bytes(str(mngr.directory))
  if not _on_all_processes(free is None or free >= needed):
    raise CheckpointError(_disk_full_message(mngr, step, needed))
  items = {'params': ocp.args.StandardSave(params),
           'meta': ocp.args.JsonSave(meta)}
  if opt_state is not None:
    items['opt_state'] = ocp.args.StandardSave(opt_state)
    items['progress'] = ocp.args.JsonSave(progress)
  _in_flight[mngr] = (step, needed)
  _shorten_disk_full_reports()
  try:
    mngr.save(step, args=ocp.args.Composite(**items))
  except Exception as error:  # pylint: disable=broad-exception-caught
    _raise_save_error(mngr, error)


def wait_until_finished(mngr: ocp.CheckpointManager) -> None:
  """Waits for a background save; its failure becomes a CheckpointError.

  A failed step's partial directory is removed (orbax never lists it, and
  it holds the space a restart needs), so the previous step stays latest.
  """
  try:
    mngr.wait_until_finished()
  except Exception as error:  # pylint: disable=broad-exception-caught
    _raise_save_error(mngr, error)
  _in_flight.pop(mngr, None)


def _shorten_disk_full_reports() -> None:
  """Keeps the background reports of a full disk out of the way.

  orbax's save threads log each failed write with a traceback, and asyncio
  reports each failed write task again when it is collected, which may be
  after the final one-line error. For a full disk these say nothing that
  error does not: orbax's keep their one-line message, asyncio's are
  dropped. Reports of other failures are left whole.
  """
  absl_log, asyncio_log = logging.getLogger('absl'), logging.getLogger(
      'asyncio')
  if any(getattr(f, 'shortens_disk_full', False) for f in absl_log.filters):
    return

  def shorten(record: logging.LogRecord) -> bool:
    if record.exc_info and _is_disk_full(record.exc_info[1]):
      record.exc_info, record.exc_text = None, None
    return True

  def drop(record: logging.LogRecord) -> bool:
    return not (record.exc_info and _is_disk_full(record.exc_info[1]))

  shorten.shortens_disk_full = True
  absl_log.addFilter(shorten)
  asyncio_log.addFilter(drop)


def checkpoint_bytes(*trees: Any) -> int:
  """Disk space a step of these arrays takes, a little over the real size."""
  leaves = [x for tree in trees for x in jax.tree.leaves(tree)]
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             + _OVERHEAD_PER_ARRAY for x in leaves) + 2 * _OVERHEAD_PER_ARRAY


def _raise_save_error(mngr: ocp.CheckpointManager,
                      error: Exception) -> NoReturn:
  """Removes the failed step's partial directory and says what happened."""
  step, needed = _in_flight.pop(mngr, (None, 0))
  if jax.process_index() == 0 and step is not None:
    for partial in storage.glob(storage.join(
        str(mngr.directory), f'{step}.orbax-checkpoint-tmp*')):
      try:
        storage.rmtree(partial)
      except Exception:  # pylint: disable=broad-except
        pass  # orbax never lists it; the space is what is lost.
  mngr.reload()
  if _is_disk_full(error):
    raise CheckpointError(_disk_full_message(mngr, step, needed)) from None
  raise CheckpointError(
      f'could not save step {step} in {mngr.directory} ({one_line(error)}); '
      f'{_latest_note(mngr)}') from None


def _is_disk_full(error: BaseException | None) -> bool:
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _disk_full_message(mngr: ocp.CheckpointManager, step: int | None,
                       needed: int) -> str:
  free = storage.free_bytes(str(mngr.directory)) or 0
  return (f'no space left in {mngr.directory} to save step {step}: it needs '
          f'{_mib(needed)}, {_mib(free)} free; {_latest_note(mngr)}, and '
          'the same command resumes from it once there is space')


def _latest_note(mngr: ocp.CheckpointManager) -> str:
  latest = mngr.latest_step()
  if latest is None:
    return 'no checkpoint was written'
  return f'step {latest} stays the latest checkpoint'


def _mib(size: int) -> str:
  return f'{size / 2**20:.2f} MiB'


def one_line(error: BaseException) -> str:
  """The gist of a (tensorstore) error: its type, code and root cause."""
  text = ' '.join(str(error).split()).split(' [tensorstore_spec')[0]
  if len(text) > 200:
    text = text[:60] + ' ... ' + text[-120:]
  return f'{type(error).__name__}: {text}'


def _on_all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process (they must act alike)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.array(ok)).all())


def _abstract(tree: Any) -> Any:
  """Shapes, dtypes and target shardings of arrays or ShapeDtypeStructs."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding), tree)


def check_compatible(meta: dict[str, Any], spec: models.AlexNetSpec,
                     where: str) -> None:
  """Raises if the checkpoint's network differs from `spec` in shape."""
  saved = meta.get('model', {})
  current = dataclasses.asdict(spec)
  for key in ('num_towers', 'conv_features', 'fc_features', 'num_classes'):
    mine, theirs = current[key], saved.get(key)
    if isinstance(mine, tuple):
      theirs = tuple(theirs) if theirs is not None else None
    if theirs != mine:
      raise ValueError(
          f'{where} holds a different model: config.model.{key} is {mine} '
          f'here but {theirs} in the checkpoint')


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return mngr.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']


def restore(mngr: ocp.CheckpointManager, step: int, *, params_like: Any,
            opt_state_like: Any = None) -> dict[str, Any]:
  """Restores a step onto the shardings of the given (abstract) trees."""
  items = {'params': ocp.args.StandardRestore(_abstract(params_like)),
           'meta': ocp.args.JsonRestore()}
  if opt_state_like is not None:
    items['opt_state'] = ocp.args.StandardRestore(_abstract(opt_state_like))
    items['progress'] = ocp.args.JsonRestore()
  return dict(mngr.restore(step, args=ocp.args.Composite(**items)))


def restore_latest_readable(
    mngr: ocp.CheckpointManager, spec: models.AlexNetSpec, *,
    params_like: Any, opt_state_like: Any = None,
    step: int | None = None) -> tuple[int, dict[str, Any]] | None:
  """(step, items) of `step`, or else of the newest step that reads back.

  Walking newest first, a step whose items do not read back whole (damaged
  files, a half-copied directory) is moved aside to `<step>.damaged-<time>`,
  nothing deleted, with a one-line warning. Returns None when the directory
  never held a checkpoint.

  Raises:
    CheckpointError: the given `step`, or every step, does not read back.
    ValueError: a step holds another model; that is the config's doing, so
      nothing is moved.
  """
  steps = [step] if step is not None else sorted(mngr.all_steps(), reverse=True)
  for candidate in steps:
    where = storage.join(str(mngr.directory), str(candidate))
    restored, why = _read_step(mngr, candidate, spec, params_like,
                               opt_state_like)
    if _on_all_processes(why is None):
      return candidate, restored
    why = why or 'it does not read back on another process'
    if step is not None:
      raise CheckpointError(f'checkpoint {where} could not be read ({why})')
    logs.console(f'warning: checkpoint {where} could not be read ({why}); '
                 f'{_move_aside(mngr, candidate)}')
  damaged = storage.glob(storage.join(str(mngr.directory), '*.damaged-*'))
  if damaged:
    raise CheckpointError(
        f'no readable checkpoint in {mngr.directory}: the damaged ones were '
        f'moved aside ({", ".join(map(storage.basename, damaged))}); move a '
        'good copy back as <step>, or remove them to start afresh')
  return None


def _read_step(mngr, step, spec, params_like, opt_state_like):
  """(items, None), or (None, why) when an item of `step` does not read."""
  where = storage.join(str(mngr.directory), str(step))
  meta, why = _attempt(lambda: read_meta(mngr, step))
  if why:
    return None, f'meta: {why}'
  check_compatible(meta, spec, where)
  if opt_state_like is not None and not any(
      storage.exists(storage.join(where, item))
      for item in ('opt_state', 'progress')):
    raise ValueError(
        f'{where} holds parameters only (an evaluation checkpoint, such as '
        'alexnet_jax.tools.convert writes); training resumes only from its own '
        'checkpoints: use another --workdir')
  stored, why = _attempt(
      lambda: _stored_shapes(mngr.directory / str(step) / 'params'))
  if why:
    return None, f'params: {why}'
  _check_shapes(stored, _shapes(params_like), where)
  items = {'meta': meta}
  wanted = {'params': ocp.args.StandardRestore(_abstract(params_like))}
  if opt_state_like is not None:
    wanted['opt_state'] = ocp.args.StandardRestore(_abstract(opt_state_like))
    wanted['progress'] = ocp.args.JsonRestore()
  for name, args in wanted.items():
    items[name], why = _attempt(lambda name=name, args=args: mngr.restore(
        step, args=ocp.args.Composite(**{name: args}))[name])
    if why:
      return None, f'{name}: {why}'
  if 'progress' in items and not _is_progress(items['progress']):
    return None, f'progress: not a progress record: {items["progress"]!r:.80}'
  return items, None


def _attempt(read: Callable[[], _T]) -> tuple[_T | None, str | None]:
  """(read(), None), or (None, the error in one line) when it raised.

  orbax reads each array in an asyncio task; when one fails, asyncio later
  reports every other failed task ("exception was never retrieved") as the
  tasks are collected, some of them only after this returns, when their
  reads end. Those reports are dropped: the one line says it all.
  """
  _ignore_reads_finishing_after_their_loop()
  asyncio_log = logging.getLogger('asyncio')
  drop = lambda record: False
  asyncio_log.addFilter(drop)
  try:
    try:
      return read(), None
    except Exception as error:  # pylint: disable=broad-exception-caught
      why = one_line(error)
    _drop_unretrieved_task_errors(asyncio_log)
    gc.collect()  # Most failed tasks go, and report, now.
    return None, why
  finally:
    asyncio_log.removeFilter(drop)


def _drop_unretrieved_task_errors(asyncio_log: logging.Logger) -> None:
  """From a failed read on, asyncio's reports of tasks whose exception
  nobody retrieved are dropped; its other records still pass."""
  if not any(getattr(f, 'drops_unretrieved', False)
             for f in asyncio_log.filters):
    keep = lambda record: 'exception was never retrieved' not in (
        record.getMessage())
    keep.drops_unretrieved = True
    asyncio_log.addFilter(keep)


def _ignore_reads_finishing_after_their_loop() -> None:
  """Stops tensorstore's reports of reads that end after a failed restore.

  The reads still in flight when one fails finish later, in tensorstore's
  threads, and their callbacks find the restore's event loop closed; each
  `RuntimeError('Event loop is closed')` would print a traceback. Other
  unraisable errors still reach the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'ignores_closed_loops', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError)
            and str(error) == 'Event loop is closed'):
      previous(unraisable)

  hook.ignores_closed_loops = True
  sys.unraisablehook = hook


def _stored_shapes(item_dir: Any) -> dict[str, tuple[int, ...]]:
  """Each stored array's shape, from an item directory's metadata."""
  handler = ocp.StandardCheckpointHandler()
  try:
    return _shapes(handler.metadata(item_dir).tree)
  finally:
    handler.close()


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, 'shape'))
  return {jax.tree_util.keystr(path): tuple(x.shape) for path, x in leaves}


def _check_shapes(stored: dict[str, tuple[int, ...]],
                  current: dict[str, tuple[int, ...]], where: str) -> None:
  """Raises if a parameter's shape differs (say, another model.input_size)."""
  for name in sorted(set(stored) | set(current)):
    if stored.get(name) != current.get(name):
      raise ValueError(
          f'{where} holds a different model: parameter {name} has shape '
          f'{current.get(name)} here but {stored.get(name)} in the checkpoint')


def _is_position(position: Any, count: int) -> bool:
  """Whether `position` is one of `count` data positions: ints 'epoch' and
  'next_index'; a global one ('order') is the only one and records what it
  counts in."""
  keys = ['epoch', 'next_index']
  if 'order' in position:
    if count != 1 or not isinstance(position['dataset'], str):
      return False
    keys += ['batch_size', 'num_examples', 'seed', 'num_skipped']
  return all(isinstance(position[k], int) for k in keys)


def _is_progress(progress: Any) -> bool:
  """Whether `progress` has the data positions (one global one, or one per
  process) and learning-rate state."""
  try:
    return (bool(progress['data']) and all(
        _is_position(d, len(progress['data'])) for d in progress['data'])
            and all(isinstance(progress['lr_policy'][k], (int, float))
                    for k in ('drops', 'best_error', 'evals_without_progress')))
  except (KeyError, TypeError):
    return False


def _move_aside(mngr: ocp.CheckpointManager, step: int) -> str:
  """Renames a step's directory so that no restart takes it; says where."""
  source = storage.join(str(mngr.directory), str(step))
  target = f'{source}.damaged-{time.strftime("%Y%m%dT%H%M%S")}'
  failed = None
  if jax.process_index() == 0:
    try:
      storage.rename(source, target)
    except Exception as error:  # pylint: disable=broad-except
      failed = one_line(error)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'alexnet_jax: moved {source}')
  mngr.reload()
  if failed:
    return f'left in place ({failed}); trying the previous step'
  return f'moved to {target}; trying the previous step'


def locate(path: str) -> tuple[str, int | None]:
  """(checkpoints directory, step) for a workdir, a checkpoints dir or a step.

  `step` is None when the path names a directory of steps (take the latest).
  """
  path = storage.check_location(path, '--checkpoint')
  if storage.isdir(storage.join(path, 'checkpoints')):
    return storage.join(path, 'checkpoints'), None
  base = storage.basename(path)
  if base.isdigit() and storage.isdir(storage.join(path, 'params')):
    return storage.dirname(path), int(base)
  return path, None


def spec_from_meta(meta: dict[str, Any]) -> models.AlexNetSpec:
  fields = dict(meta['model'])
  for key in ('conv_features', 'fc_features'):
    fields[key] = tuple(fields[key])
  return models.AlexNetSpec(**fields)


def load_params(path: str) -> tuple[Any, models.AlexNetSpec,
                                    dict[str, Any]]:
  """(params as numpy, spec, meta) of a checkpoint written by any mode."""
  ckpt_dir, step = locate(path)
  mngr = manager(ckpt_dir)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no complete checkpoint in {ckpt_dir}')
  meta = read_meta(mngr, step)
  spec = spec_from_meta(meta)
  strategy = parallel.create_strategy('single', 1, spec, 1)
  like = parallel.abstract_params(spec, strategy)
  params = restore(mngr, step, params_like=like)['params']
  return jax.tree.map(np.asarray, params), spec, meta
