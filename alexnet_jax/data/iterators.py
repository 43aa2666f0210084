"""Iterators: batches of records, resumable training, padded evaluation.

Undecodable files (zero bytes, truncated, not an image) are dropped: a cheap
graph check on the bytes catches the usual cases before decoding, and
decoding errors catch the rest; files that cannot be read stop the pipeline
instead. Every example carries its position, so a gap between positions is
a skipped file, counted once per file.

A damaged shard of a prepared dataset (a record failing its CRC, another
number of records than index.json lists, a missing file) stops training and
evaluation alike with `DamagedDataError`, one line naming the shard and the
command that repairs it: a TFRecord cannot be read past a damaged record,
so skipping would silently drop the rest of the shard, up to 1,024 images.

Training follows the source's global order where it has one (folders,
synthetic data, prepared datasets): an undecodable file is replaced by the
next decodable one in the epoch's order, so every process still reads
exactly its rows of each global batch, and the position is one number for
all processes. A TFDS dataset drops undecodable files from each process's
share instead.

Batches are local numpy arrays of `global_batch // process_count` examples;
`to_global` and `prefetch_to_device` turn them into global `jax.Array`s.
"""

import functools
import os
import queue
import threading
import time
from typing import Callable, Iterator, Optional

from absl import logging
import jax
import numpy as np
import tensorflow as tf

from alexnet_jax.data import augment
from alexnet_jax.data import decode
from alexnet_jax.data import device
from alexnet_jax.data import sources

_AUTOTUNE = tf.data.AUTOTUNE


@decode.graph_only
def decodable_only(ds: tf.data.Dataset,
                   give_up_after: Optional[int] = None) -> tf.data.Dataset:
  """Drops records whose bytes fail `is_decodable` (checked in parallel).

  With `give_up_after`, stops with an error after that many undecodable
  records in a row (a whole epoch without an image would never end).
  """
  ds = ds.map(lambda r: (decode.is_decodable(r['encoded']), r),
              num_parallel_calls=_AUTOTUNE)
  if give_up_after:
    ds = ds.scan(tf.constant(0, tf.int64),
                 functools.partial(_count_invalid_run, limit=give_up_after))
  return ds.filter(_is_valid).map(_record)


_NO_IMAGE = 'no decodable training image in a whole epoch'


def _count_invalid_run(run: tf.Tensor, element, *, limit: int):
  valid, record = element
  run = tf.where(valid, tf.constant(0, tf.int64), run + 1)
  check = tf.debugging.Assert(run < limit, [_NO_IMAGE])
  with tf.control_dependencies([check]):
    return run, (tf.identity(valid), record)


def _is_valid(valid: tf.Tensor, unused_record: dict) -> tf.Tensor:
  return valid


def _record(unused_valid: tf.Tensor, record: dict) -> dict:
  return record


@decode.graph_only
def map_dropping_undecodable(ds: tf.data.Dataset,
                             fn: Callable[[dict], dict]) -> tf.data.Dataset:
  """`ds.map(fn)`, dropping the records on which `fn`'s decoding fails.

  Only `fn`'s own errors are ignored, not those of reading the file
  upstream: a file that cannot be read is not an undecodable image.
  Order is kept.
  """
  return ds.interleave(
      lambda r: tf.data.Dataset.from_tensors(r).map(fn).ignore_errors(),
      block_length=1, num_parallel_calls=_AUTOTUNE, deterministic=True)


def _options() -> tf.data.Options:
  """Deterministic; one private pool of threads, one per core, each op on
  one thread (as big_vision runs tf.data)."""
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  options.threading.private_threadpool_size = len(os.sched_getaffinity(0))
  options.threading.max_intra_op_parallelism = 1
  return options


@decode.graph_only
def train_records(config, *, epoch: int = 0) -> tf.data.Dataset:
  """Epoch `epoch`'s undecoded records {'encoded', 'label', 'index', ...},
  in its order."""
  source = sources.from_config(config)
  if source.global_order:
    start = epoch * source.num_train
    return source.train_records(config.seed, sources.Rows(start, 1, 0, 1)
                                ).take(source.num_train)
  ds = source.train_records(config.seed, epoch, 0, 0, 1)
  return ds.take(source.train_shard_size(1))


@decode.graph_only
def eval_records(config) -> tf.data.Dataset:
  """The whole validation set's undecoded records, in its stored order."""
  return sources.from_config(config).eval_records(0, 1)


@decode.graph_only
def base_images(config, *, max_images: Optional[int] = None
                ) -> tf.data.Dataset:
  """Decodable training images at resize_size (float32, [0, 1]), for stats.

  In epoch 0's shuffled order, so that `max_images` takes a fair sample.
  """
  ds = train_records(config)
  if max_images is not None:
    ds = ds.take(max_images)
  ds = decodable_only(ds)
  resize, antialias = config.input.resize_size, config.input.antialias
  ds = map_dropping_undecodable(
      ds, lambda r: decode.decode_resized(r['encoded'], resize, antialias))
  return ds.with_options(_options())


def _local_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f'batch size {batch_size} is not divisible by '
                     f'{process_count} processes.')
  return batch_size // process_count


class DataReadError(OSError):
  """The input files could not be read (not: an image could not be decoded)."""


class DamagedDataError(OSError):
  """A shard of a prepared dataset is damaged; the message names it."""


_READ_ATTEMPTS = 3
_NOT_READ_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError)


def _may_be_damage(error: tf.errors.OpError) -> bool:
  """Whether `error` can come from a damaged or missing shard."""
  return (isinstance(error, (tf.errors.DataLossError, tf.errors.NotFoundError))
          or sources.WRONG_COUNT in error.message)


def _stop_if_damaged(find_damaged: Callable[[], Optional[str]]) -> None:
  """Raises DamagedDataError with what `find_damaged` finds, if anything."""
  damaged = find_damaged()
  if damaged:
    raise DamagedDataError(damaged)


def _train_example(config, seed: int, record: dict) -> dict:
  preprocess = augment.make_train_preprocess(config, seed=seed,
                                             epoch=record['epoch'])
  return dict(preprocess(record), epoch=record['epoch'],
              position=record['position'], substitute=record['substitute'])


def _first_decodable(example: Callable[[dict], dict],
                     candidates: tf.data.Dataset) -> tf.data.Dataset:
  """`example` of the first decodable candidate, read lazily; if none is,
  a record at position -1 (which stops the iterator with `_NO_IMAGE`)."""
  good = decodable_only(candidates).flat_map(
      lambda r: tf.data.Dataset.from_tensors(r).map(example).ignore_errors())
  none = {k: tf.zeros([d or 0 for d in spec.shape], spec.dtype)
          for k, spec in good.element_spec.items()}
  none['position'] = tf.constant(-1, tf.int64)
  return good.take(1).concatenate(tf.data.Dataset.from_tensors(none)).take(1)


class TrainIterator:
  """An infinite iterator of local training batches that can be resumed.

  `get_state()` is the position after the last batch returned; `set_state`
  restores it, so a resumed run sees exactly the batches an uninterrupted one
  would. With a global order (`global_order`) the position, {'epoch',
  'next_index'}, counts the examples of the epoch that every process
  together has consumed, the same on every process: it can be restored on
  any number of processes. Without one (TFDS) it is the position in this
  process's share. Batches span epoch boundaries; the epochs are one
  tf.data pipeline (a TFDS source: a few epochs per pipeline), so the next
  epoch's first images are ready before the last one ends.

  `num_skipped` (part of the state) counts the distinct undecodable files
  this process was the first to meet: a file that fails in every epoch
  counts once, and summed over input shards each counts once. Files that
  cannot be read are retried from the last position, then stop the run
  with `DataReadError`; a damaged prepared shard stops it at once with
  `DamagedDataError`.
  """

  retry_delay_s = 2.0

  def __init__(self, config, *, process_index: int = 0,
               process_count: int = 1):
    self._config = config
    self._source = sources.from_config(config)
    self._process_index = process_index
    self._process_count = process_count
    self._batch_size = _local_batch_size(config.batch_size, process_count)
    self.global_order = self._source.global_order
    self._epoch_size = (self._source.num_train if self.global_order else
                        self._source.train_shard_size(process_count))
    if not self._epoch_size:
      raise ValueError('fewer training examples than processes.')
    self.set_state({'epoch': 0, 'next_index': 0})

  @property
  def epoch_size(self) -> int:
    """The examples of an epoch that the position counts."""
    return self._epoch_size

  def get_state(self) -> dict[str, int]:
    return {'epoch': self._epoch, 'next_index': self._next_index,
            'num_skipped': self.num_skipped}

  def set_state(self, state: dict) -> None:
    self._epoch = int(state['epoch'])
    self._next_index = int(state['next_index'])
    self.num_skipped = int(state.get('num_skipped', 0))
    self._restart(self._epoch, self._next_index)

  def _restart(self, epoch: int, start: int) -> None:
    """The next rows come from a new pipeline starting at (epoch, start)."""
    self._iterator = None
    self._start = (epoch, start)
    self._carry = None

  def __iter__(self) -> 'TrainIterator':
    return self

  @decode.graph_only
  def _dataset(self) -> tf.data.Dataset:
    seed = self._config.seed
    epoch, start = self._start
    example = functools.partial(_train_example, self._config, seed)
    if not self.global_order:  # TFDS: this process's share.
      ds = self._source.train_records(seed, epoch, start, self._process_index,
                                      self._process_count)
      ds = decodable_only(ds, give_up_after=self._epoch_size)
      return self._batched(map_dropping_undecodable(ds, example))
    rows = sources.Rows(epoch * self._epoch_size + start,
                        self._config.batch_size, self._process_index,
                        self._process_count)
    if self._source.checks_bytes:
      return self._batched(self._source.train_records(
          seed, rows, functools.partial(_first_decodable, example)))
    return self._batched(self._source.train_records(seed, rows).map(
        example, num_parallel_calls=_AUTOTUNE))

  def _batched(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    ds = ds.batch(self._batch_size)
    return ds.prefetch(self._config.input.prefetch_batches).with_options(
        _options())

  def _next_rows(self) -> dict[str, np.ndarray]:
    """The next rows of the pipeline (a short batch where a finite one
    ends), starting a new pipeline after it."""
    while True:
      if self._iterator is None:
        self._iterator = self._dataset().as_numpy_iterator()
      rows = next(self._iterator, None)
      if rows is not None:
        return rows
      last_epoch = self._start[0] + self._source.epochs_per_dataset - 1
      self._restart(last_epoch + 1, 0)

  def _assemble(self) -> dict[str, np.ndarray]:
    parts, count = [], 0
    while count < self._batch_size:
      part = self._carry if self._carry is not None else self._next_rows()
      self._carry = None
      parts.append(part)
      count += len(part['label'])
    batch = (parts[0] if len(parts) == 1 else
             {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    if count > self._batch_size:
      self._carry = {k: v[self._batch_size:] for k, v in batch.items()}
      batch = {k: v[:self._batch_size] for k, v in batch.items()}
    return batch

  def __next__(self) -> dict[str, np.ndarray]:
    for attempt in range(1, _READ_ATTEMPTS + 1):
      try:
        batch = self._assemble()
        break
      except _NOT_READ_ERRORS as error:
        if _NO_IMAGE in error.message:
          raise ValueError(_NO_IMAGE) from None
        if _may_be_damage(error):
          _stop_if_damaged(self._damaged_shard)
        raise
      except tf.errors.OpError as error:
        message = sources.op_message(error)
        if isinstance(error, tf.errors.DataLossError) or (
            attempt == _READ_ATTEMPTS and _may_be_damage(error)):
          _stop_if_damaged(self._damaged_shard)
        if attempt == _READ_ATTEMPTS:
          raise DataReadError(f'reading the training data failed '
                              f'{attempt} times: {message}') from None
        logging.warning('Reading the training data failed (%s); retrying '
                        'from the last batch.', message)
        time.sleep(self.retry_delay_s * attempt)
        self._restart(self._epoch, self._next_index)
    if self.global_order:
      self._advance_global(batch)
    else:
      self._advance(batch['epoch'], batch['position'])
    return {k: batch[k] for k in device.TRAIN_KEYS}

  def _damaged_shard(self) -> Optional[str]:
    if self.global_order:
      return self._source.damaged_train_shard(self._config.seed, self._epoch,
                                              self._next_index)
    return self._source.damaged_train_shard(
        self._config.seed, self._epoch, self._next_index,
        self._process_index, self._process_count)

  def _advance_global(self, batch: dict[str, np.ndarray]) -> None:
    """Moves the position past one global batch, after checking that the
    rows are this process's rows of it; counts the undecodable files met
    in epoch 0 (every file is in every epoch)."""
    first = (self._epoch * self._epoch_size + self._next_index +
             self._process_index * self._batch_size)
    rows = batch['epoch'] * self._epoch_size + batch['position']
    if not np.array_equal(rows, first + np.arange(self._batch_size)):
      raise ValueError(_NO_IMAGE)  # A position found no decodable file.
    replaced = int(np.sum(batch['substitute'] & (batch['epoch'] == 0)))
    if replaced:
      self.num_skipped += replaced
      logging.warning('Replaced undecodable training files by the next '
                      'ones: %d distinct so far.', self.num_skipped)
    self._epoch, self._next_index = divmod(
        self._epoch * self._epoch_size + self._next_index +
        self._config.batch_size, self._epoch_size)

  def _advance(self, epochs: np.ndarray, indices: np.ndarray) -> None:
    """Moves the state past the rows (epoch, index) and counts the files
    skipped before each."""
    for epoch in np.unique(epochs):
      if epoch != self._epoch:
        self._count_skipped(np.arange(self._next_index, self._epoch_size))
        self._epoch, self._next_index = int(epoch), 0
      rows = indices[epochs == epoch]
      if rows[-1] + 1 - self._next_index > len(rows):
        self._count_skipped(np.setdiff1d(
            np.arange(self._next_index, rows[-1] + 1), rows))
      self._next_index = int(rows[-1]) + 1
    if self._next_index == self._epoch_size:
      self._epoch, self._next_index = self._epoch + 1, 0

  def _count_skipped(self, positions: np.ndarray) -> None:
    """Counts the files skipped at `positions` of the current epoch."""
    if not len(positions):
      return
    new = self._source.first_skips(self._config.seed, self._epoch, positions,
                                   self._process_index, self._process_count)
    if new:
      self.num_skipped += new
      logging.warning('Skipped undecodable training files: %d distinct so '
                      'far.', self.num_skipped)


def create_train_iterator(config, *, process_index: int = 0,
                          process_count: int = 1) -> TrainIterator:
  """This process's infinite iterator of training batches."""
  return TrainIterator(config, process_index=process_index,
                       process_count=process_count)


class EvalIterable:
  """One pass over this process's share of the evaluation set per `iter`.

  Every example is seen exactly once: the last batch is padded (mask False),
  and every process yields the same number of batches. After a pass,
  `num_examples` is the number of real examples yielded and `num_skipped`
  the number of undecodable files.
  """

  def __init__(self, config, *, process_index: int = 0,
               process_count: int = 1):
    self._config = config
    self._source = sources.from_config(config)
    self._process_index = process_index
    self._process_count = process_count
    self._batch_size = _local_batch_size(config.eval_batch_size,
                                         process_count)
    self._shard_size = self._source.eval_shard_size(process_index,
                                                    process_count)
    largest = max(self._source.eval_shard_size(p, process_count)
                  for p in range(process_count))
    self.num_batches = -(-largest // self._batch_size)
    self.num_examples = 0
    self.num_skipped = 0

  @decode.graph_only
  def _dataset(self) -> tf.data.Dataset:
    ds = self._source.eval_records(self._process_index, self._process_count)
    preprocess = augment.make_eval_preprocess(self._config)
    if self._source.checks_bytes:
      ds = map_dropping_undecodable(decodable_only(ds), preprocess)
    else:
      ds = ds.map(preprocess, num_parallel_calls=_AUTOTUNE)
    ds = ds.batch(self._batch_size)
    return ds.prefetch(self._config.input.prefetch_batches).with_options(
        _options())

  def _padded(self, batch: Optional[dict], image_shape) -> dict:
    count = 0 if batch is None else len(batch['label'])
    pad = self._batch_size - count
    padded = {
        'image': np.zeros((pad,) + image_shape, np.uint8),
        'label': np.zeros((pad,), np.int32),
        'mask': np.zeros((pad,), bool),
    }
    if batch is None:
      return padded
    batch = {'image': batch['image'], 'label': batch['label'],
             'mask': np.ones((count,), bool)}
    if not pad:
      return batch
    return {k: np.concatenate([batch[k], padded[k]]) for k in batch}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    self.num_examples = 0
    self.num_skipped = 0
    resize = self._config.input.resize_size
    image_shape = (resize, resize, 3)
    batches = self._dataset().as_numpy_iterator()
    for _ in range(self.num_batches):
      try:
        batch = next(batches, None)
      except tf.errors.OpError as error:  # Undecodable files are dropped.
        if _may_be_damage(error):
          _stop_if_damaged(functools.partial(
              self._source.damaged_eval_shard, self._process_index,
              self._process_count))
        raise DataReadError('reading the evaluation data failed: ' +
                            sources.op_message(error)) from None
      padded = self._padded(batch, image_shape)
      self.num_examples += int(padded['mask'].sum())
      yield padded
    self.num_skipped = self._shard_size - self.num_examples
    if self.num_skipped:
      logging.warning('Skipped %d undecodable evaluation files.',
                      self.num_skipped)


def create_eval_iterator(config, *, process_index: int = 0,
                         process_count: int = 1) -> EvalIterable:
  """This process's uint8 base-image batches, padded, masked, re-iterable."""
  return EvalIterable(config, process_index=process_index,
                      process_count=process_count)


def to_global(batch: dict[str, np.ndarray],
              sharding_by_key: dict[str, jax.sharding.Sharding]
              ) -> dict[str, jax.Array]:
  """Assembles global arrays from every process's local batch."""
  return {k: jax.make_array_from_process_local_data(sharding_by_key[k], v)
          for k, v in batch.items()}


_END = object()


class _DevicePrefetcher:
  """Yields (global_batch, state, num_skipped), filled by a thread.

  `state` and `num_skipped` are read from the host iterator right after the
  batch they belong to, so the caller can checkpoint the position of the
  batch it last received rather than of the ones still queued.
  """

  def __init__(self, iterator, size: int, sharding_by_key: dict):
    self._queue = queue.Queue(maxsize=max(1, size))
    self._stop = threading.Event()
    self._thread = threading.Thread(
        target=self._fill, args=(iterator, sharding_by_key), daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def _fill(self, iterator, sharding_by_key) -> None:
    get_state = getattr(iterator, 'get_state', lambda: None)
    try:
      for batch in iterator:
        item = (to_global(batch, sharding_by_key), get_state(),
                getattr(iterator, 'num_skipped', 0))
        if not self._put(item):
          return
    except Exception as e:  # pylint: disable=broad-except
      self._put(e)
      return
    self._put(_END)

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if item is _END:
      raise StopIteration
    if isinstance(item, Exception):
      raise item
    return item

  def close(self) -> None:
    """Stops the thread; batches still queued are dropped."""
    self._stop.set()
    self._thread.join()

  def __enter__(self) -> '_DevicePrefetcher':
    return self

  def __exit__(self, *exc) -> None:
    # A thread left inside TF at interpreter exit aborts the process.
    self.close()


def prefetch_to_device(iterator, size: int,
                       sharding_by_key: dict) -> _DevicePrefetcher:
  """Moves batches to devices `size` batches ahead, in a background thread."""
  return _DevicePrefetcher(iterator, size, sharding_by_key)
