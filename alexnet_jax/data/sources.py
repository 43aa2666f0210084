"""Data sources: the global order of the examples, and each process's rows.

`config.dataset`: a TFDS name (default `imagenet2012`, manual download),
`folder:ROOT` (ImageNet's raw layout, `ROOT/{train,val}/<class>/`),
`synthetic` (generated once, then read as a folder) or `prepared:DIR`
(written by `alexnet_jax.tools.prepare`). Every source gives records
{'encoded', 'label', 'index', 'position', 'epoch'}: the undecoded image,
its example index in the dataset, the position it fills in the epoch's
order, and the epoch.

Folders, synthetic data and prepared datasets visit the training set in one
global order (`GlobalOrder`): per epoch a permutation of the example
indices drawn from (seed, epoch) alone, the epochs one after another as one
stream, global batch s being the stream's examples [s*B, (s+1)*B). A
process reads only its rows of each global batch, whatever the number of
processes, so a run resumes exactly on any number of them. A TFDS dataset
keeps a fixed share per process, in an order drawn from (seed, epoch) per
share: it resumes exactly on the same number of input shards only.
"""

import dataclasses
import functools
import os
import re
from typing import Any, Callable, Iterable, Optional
import zlib

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import storage
from alexnet_jax.data import synthetic

_AUTOTUNE = tf.data.AUTOTUNE


_IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
_EPOCHS = 2**62  # "Forever": the train datasets are infinite.
_READ_BUFFER = 8 << 20  # TFRecord read buffer: few, large reads.


# Blocks of consecutive prepared examples shuffled together: about 4,096
# examples at prepare's default 1,024 per shard.
WINDOW_BLOCKS = 4


def _order_key(seed: int, epoch: tf.Tensor) -> tf.Tensor:
  """The key of an epoch's order (augmentation keys fold in indices >= 0)."""
  key = tf.constant([seed, 0], tf.int64)
  key = tf.random.experimental.stateless_fold_in(key, epoch)
  return tf.random.experimental.stateless_fold_in(key, -1)


class GlobalOrder:
  """Each epoch's order of all examples, from (seed, epoch) alone.

  The examples are stored in blocks of consecutive ones (a prepared
  dataset's shards; a folder is one block). An epoch shuffles the order of
  the blocks, cuts it into windows of `window_blocks` blocks and shuffles
  the examples inside each window: a reader takes whole windows in large
  sequential reads, and a batch mixes the examples of a window's blocks.
  One block in one window is a full shuffle.
  """

  def __init__(self, block_sizes: np.ndarray, window_blocks: int):
    self.block_sizes = np.asarray(block_sizes, np.int64)
    self.block_starts = np.cumsum(self.block_sizes) - self.block_sizes
    self.num_examples = int(self.block_sizes.sum())
    self.window_blocks = window_blocks
    self.num_windows = -(-len(self.block_sizes) // window_blocks)

  def windows(self, key: tf.Tensor):
    """(blocks [windows, window_blocks], -1 padded; first position; size)
    of the epoch of `key`, in order."""
    order = tf.random.experimental.stateless_shuffle(
        tf.range(len(self.block_sizes), dtype=tf.int64), key)
    pad = self.num_windows * self.window_blocks - len(self.block_sizes)
    blocks = tf.reshape(tf.pad(order, [[0, pad]], constant_values=-1),
                        [self.num_windows, self.window_blocks])
    sizes = tf.reduce_sum(tf.where(
        blocks >= 0, tf.gather(self.block_sizes, tf.maximum(blocks, 0)), 0),
                          axis=1)
    return blocks, tf.cumsum(sizes) - sizes, sizes

  def window_order(self, key: tf.Tensor, window: tf.Tensor,
                   blocks: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(offsets, example indices) of a window's examples in epoch order;
    offsets count from the window's first stored example (its blocks read
    in order)."""
    blocks = blocks[blocks >= 0]
    stored = tf.ragged.range(tf.gather(self.block_starts, blocks),
                             tf.gather(self.block_starts + self.block_sizes,
                                       blocks)).flat_values
    offsets = tf.random.experimental.stateless_shuffle(
        tf.range(tf.size(stored, tf.int64)),
        tf.random.experimental.stateless_fold_in(key, window))
    return offsets, tf.gather(stored, offsets)

  def epoch(self, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s example indices in order (for tools and tests)."""
    key = _order_key(seed, tf.constant(epoch, tf.int64))
    blocks, _, _ = self.windows(key)
    return np.concatenate([
        self.window_order(key, tf.constant(w, tf.int64), blocks[w])[1].numpy()
        for w in range(self.num_windows)])


@dataclasses.dataclass(frozen=True)
class Rows:
  """Which rows of the global stream a reader takes: from stream position
  `start` on, rows [shard * B / shards, (shard + 1) * B / shards) of every
  global batch of B examples."""
  start: int
  batch_size: int
  shard: int
  shards: int

  def mine(self, epoch: tf.Tensor, positions: tf.Tensor,
           num_examples: int) -> tf.Tensor:
    """Whether the stream's `positions` of `epoch` are this reader's."""
    stream = tf.cast(epoch, tf.int64) * num_examples + positions
    row = tf.math.floormod(stream - self.start, self.batch_size)
    local = self.batch_size // self.shards
    return (stream >= self.start) & (row // local == self.shard)


def _over_epochs(epoch_records: Callable[[tf.Tensor, tf.Tensor],
                                         tf.data.Dataset],
                 first_epoch: int, start: int) -> tf.data.Dataset:
  """Epochs first_epoch, first_epoch + 1, ... as one dataset.

  The first starts at position `start`. One dataset keeps the pipeline's
  parallel stages busy across epoch boundaries.
  """
  def epoch(e):
    skip = tf.where(tf.equal(e, first_epoch), tf.constant(start, tf.int64),
                    tf.constant(0, tf.int64))
    return epoch_records(e, skip)

  return tf.data.Dataset.range(first_epoch, _EPOCHS).flat_map(epoch)


def _records(encoded, label, index, epoch, position=None,
             substitute=None) -> dict:
  """A record; `position` defaults to `index`, `substitute` (whether the
  example stands in for an undecodable one at `position`) to False."""
  index = tf.cast(index, tf.int64)
  position = index if position is None else tf.cast(position, tf.int64)
  if substitute is None:
    substitute = tf.zeros_like(index, tf.bool)
  return {'encoded': encoded, 'label': tf.cast(label, tf.int32),
          'index': index, 'epoch': tf.cast(epoch, tf.int64) + 0 * index,
          'position': position, 'substitute': substitute}


@dataclasses.dataclass(frozen=True)
class _FolderSource:
  """Files in ImageNet's raw layout, listed once."""
  train_paths: np.ndarray
  train_labels: np.ndarray
  eval_paths: np.ndarray
  eval_labels: np.ndarray
  class_names: tuple[str, ...]
  checks_bytes = True  # Raw files can be undecodable.
  epochs_per_dataset = _EPOCHS
  global_order = True

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_train(self) -> int:
    return len(self.train_paths)

  @property
  def order(self) -> GlobalOrder:
    """Every file in one block: each epoch is a full shuffle."""
    return GlobalOrder(np.array([self.num_train]), 1)

  def train_records(self, seed: int, rows: Rows,
                    pick: Optional[Callable[[tf.data.Dataset],
                                            tf.data.Dataset]] = None
                    ) -> tf.data.Dataset:
    """The files of `rows` in the global order, epoch after epoch.

    With `pick`, each position's record is `pick` of its candidates: the
    file at that position, then the files after it in the epoch's order
    (wrapping around), read only as far as `pick` takes them; so an
    undecodable file is replaced by the next good one, on any number of
    processes alike.
    """
    num_train, order = self.num_train, self.order
    paths = tf.constant(self.train_paths.astype(str))
    labels = tf.constant(self.train_labels)
    first_epoch, start = divmod(rows.start, num_train)

    def epoch_records(epoch, skip):
      examples = order.window_order(_order_key(seed, epoch),
                                    tf.constant(0, tf.int64),
                                    tf.constant([0], tf.int64))[1]
      positions = tf.range(skip, num_train)
      positions = positions[rows.mine(epoch, positions, num_train)]

      def record(candidate, position):
        example = examples[candidate % num_train]
        return _records(tf.io.read_file(paths[example]), labels[example],
                        example, epoch, position, candidate > position)

      ds = tf.data.Dataset.from_tensor_slices(positions)
      if pick is None:
        return ds.map(lambda q: record(q, q), num_parallel_calls=_AUTOTUNE)
      return ds.interleave(
          lambda q: pick(tf.data.Dataset.range(q, q + num_train).map(
              lambda c: record(c, q))),
          block_length=1, num_parallel_calls=_AUTOTUNE, deterministic=True)

    return _over_epochs(epoch_records, first_epoch, start)

  def eval_shard_size(self, process_index: int, process_count: int) -> int:
    return len(self.eval_paths[process_index::process_count])

  def damaged_train_shard(self, *unused_position) -> Optional[str]:
    """None: only prepared datasets are made of shards this package checks."""
    return None

  def damaged_eval_shard(self, *unused_share) -> Optional[str]:
    """None: only prepared datasets are made of shards this package checks."""
    return None

  def eval_records(self, process_index: int,
                   process_count: int) -> tf.data.Dataset:
    paths = self.eval_paths[process_index::process_count]
    ds = tf.data.Dataset.from_tensor_slices(
        (paths.astype(str),
         self.eval_labels[process_index::process_count],
         np.arange(len(paths), dtype=np.int64)))
    return ds.map(lambda p, y, i: _records(tf.io.read_file(p), y, i, 0),
                  num_parallel_calls=_AUTOTUNE)


_IMAGE_SUFFIXES = ('.jpeg', '.jpg', '.png', '.gif', '.bmp', '.webp')


def _list_split(split_dir: str, class_names: tuple[str, ...]):
  """Paths and labels of every file under split_dir/<class>/, sorted."""
  paths, labels = [], []
  for label, name in enumerate(class_names):
    directory = storage.join(split_dir, name)
    if not storage.isdir(directory):
      continue
    names = storage.files_in(directory)
    paths += [storage.join(directory, n) for n in names]
    labels += [label] * len(names)
  return np.array(paths, dtype=object), np.array(labels, dtype=np.int32)


def _check_split_layout(split: str, split_dir: str, count: int) -> None:
  """A one-line error for a split without images in class folders."""
  if count:
    return
  loose = sum(1 for name in storage.files_in(split_dir)
              if name.lower().endswith(_IMAGE_SUFFIXES))
  found = (f'{loose} images directly in it but no class folders' if loose
           else 'no images in class folders')
  raise ValueError(
      f'folder dataset, split {split!r}: {split_dir} has {found}; expected '
      f'{split_dir}/<class>/<image> with the class folders of train/ '
      '(docs/data.md, "ImageNet", shows how to arrange ImageNet\'s '
      'validation set)')


@functools.lru_cache(maxsize=8)
def _folder_source(root: str) -> _FolderSource:
  train_dir, val_dir = storage.join(root, 'train'), storage.join(root, 'val')
  for d in (train_dir, val_dir):
    if not storage.isdir(d):
      raise FileNotFoundError(
          f'folder dataset {root!r} needs {d}/<class>/<images>.')
  class_names = tuple(storage.subfolders(train_dir))
  unknown = set(storage.subfolders(val_dir)) - set(class_names)
  if unknown:
    raise ValueError(f'{val_dir} has classes absent from {train_dir}: '
                     f'{sorted(unknown)[:5]}')
  train_paths, train_labels = _list_split(train_dir, class_names)
  eval_paths, eval_labels = _list_split(val_dir, class_names)
  _check_split_layout('train', train_dir, len(train_paths))
  _check_split_layout('val', val_dir, len(eval_paths))
  return _FolderSource(train_paths, train_labels, eval_paths, eval_labels,
                       class_names)


PREPARED_INDEX = 'index.json'
PREPARED_FEATURES = {
    'image': tf.io.FixedLenFeature([], tf.string),
    'label': tf.io.FixedLenFeature([], tf.int64),
}


def _pieces(counts: np.ndarray, begin: int, end: int) -> np.ndarray:
  """[(shard, first, size)] covering [begin, end) of the shards in order."""
  ends = np.cumsum(counts)
  starts = ends - counts
  pieces = []
  for shard in np.flatnonzero((starts < end) & (ends > begin)):
    first = max(begin, starts[shard]) - starts[shard]
    last = min(end, ends[shard]) - starts[shard]
    pieces.append((shard, first, last - first))
  return np.array(pieces, np.int64).reshape(-1, 3)


# In the error of a shard that holds another number of records than the
# index lists (truncated at a record boundary, or another shard).
WRONG_COUNT = 'a prepared shard holds another number of records than index.json'


def _read_shard(paths: tf.Tensor, counts: tf.Tensor,
                shard: tf.Tensor) -> tf.Tensor:
  """A shard's serialized records, read whole without decoding; a shard
  that does not hold the `counts` of index.json stops the pipeline
  (`WRONG_COUNT`)."""
  serialized = tf.data.TFRecordDataset(
      paths[shard], buffer_size=_READ_BUFFER).batch(
          2**31 - 1).get_single_element()
  whole = tf.debugging.Assert(
      tf.equal(tf.size(serialized, tf.int64), counts[shard]),
      [WRONG_COUNT, paths[shard]])
  with tf.control_dependencies([whole]):
    return tf.identity(serialized)


def _read_shards(paths: tf.Tensor, counts: tf.Tensor,
                 shards: tf.Tensor) -> tf.Tensor:
  """The serialized records of `shards`, one after another."""
  return tf.data.Dataset.from_tensor_slices(shards).map(
      functools.partial(_read_shard, paths, counts)).unbatch().batch(
          2**31 - 1).get_single_element()


def _parsed(serialized: tf.Tensor, label_index, epoch, positions) -> dict:
  examples = tf.io.parse_example(serialized, PREPARED_FEATURES)
  return _records(examples['image'], examples['label'], label_index, epoch,
                  positions)


def _read_pieces(paths: tf.Tensor, counts: np.ndarray,
                 pieces: np.ndarray) -> tf.data.Dataset:
  """Records of the pieces [(shard, first, size)] in stored order, two
  shards read at a time; everything is done per piece, nothing per
  example."""
  table = tf.constant(pieces, tf.int64)
  counts = tf.constant(counts, tf.int64)
  firsts = tf.constant(np.cumsum(pieces[:, 2]) - pieces[:, 2], tf.int64)

  def read(piece):
    shard, first, size = tf.unstack(table[piece])
    serialized = _read_shard(paths, counts, shard)[first:first + size]
    index = tf.range(firsts[piece], firsts[piece] + size)
    return _parsed(serialized, index, 0, None)

  ds = tf.data.Dataset.range(len(pieces))
  return ds.map(read, num_parallel_calls=2).unbatch()


def op_message(error: tf.errors.OpError) -> str:
  """The first line of a TensorFlow error, without its op and node names."""
  message = error.message.strip().splitlines()[0]
  message = re.sub(r'\{\{[^}]*\}\}\s*', '', message)
  return re.sub(r'\s*\[Op:.*$', '', message)


def shard_damage(path: str, count: int, size: Optional[int] = None,
                 records_crc32: Optional[int] = None) -> Optional[str]:
  """Why the prepared shard at `path` is damaged, or None if it is whole.

  Whole: it exists, has `size` bytes, every record's CRC-32C (TFRecord's
  own) holds, it holds `count` records, and their CRC-32 (zlib, over the
  records in order) is `records_crc32`; `size` and `records_crc32` are
  checked when given (prepare records them). Reads the whole file. A file
  that cannot be read (permissions, network) raises OSError: it is not
  known to be damaged.
  """
  if not storage.exists(path):
    return 'missing'
  actual = storage.size(path)
  if size is not None and actual != size:
    return f'{actual} bytes, not the {size} prepared (truncated or replaced)'
  read, crc = 0, 0
  records = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER)
  try:
    for batch in records.batch(256).as_numpy_iterator():
      for record in batch:
        crc = zlib.crc32(record, crc)
      read += len(batch)
  except tf.errors.DataLossError as error:
    return f'{op_message(error)} (its records from there on are unreadable)'
  except tf.errors.OpError as error:
    raise OSError(f'{path}: {op_message(error)}') from None
  if read != count:
    return f'{read} records, not the {count} index.json lists'
  if records_crc32 is not None and crc != records_crc32:
    return ('its records differ from those prepared (CRC-32 '
            f'{crc:08x}, not {records_crc32:08x}): another shard?')
  return None


@dataclasses.dataclass(frozen=True)
class _PreparedSource:
  """Base images stored by `alexnet_jax.tools.prepare` as TFRecord shards."""
  root: str
  index: dict
  checks_bytes = False  # Every stored image was encoded by prepare.
  epochs_per_dataset = _EPOCHS
  global_order = True

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self.index['class_names'])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def _split(self, split: str):
    shards = self.index['splits'][split]['shards']
    paths = tf.constant([storage.join(self.root, s['file']) for s in shards])
    return paths, np.array([s['count'] for s in shards], np.int64)

  @property
  def num_train(self) -> int:
    return self.index['splits']['train']['num_examples']

  @property
  def order(self) -> GlobalOrder:
    """The shards are the blocks: a window is WINDOW_BLOCKS shards."""
    return GlobalOrder(self._split('train')[1], WINDOW_BLOCKS)

  def train_records(self, seed: int, rows: Rows,
                    pick: Optional[Callable] = None) -> tf.data.Dataset:
    """The examples of `rows` in the global order, epoch after epoch.

    Each window that holds rows of `rows` is read whole, its shards one
    after another without decoding, two windows at a time; only the rows'
    records are parsed. Nothing is done per example.
    """
    del pick  # Every stored image was encoded by prepare.
    paths, counts = self._split('train')
    order, num_train = self.order, self.num_train
    counts = tf.constant(counts, tf.int64)

    def wanted(epoch, window):
      key = _order_key(seed, epoch)
      blocks, firsts, sizes = order.windows(key)
      positions = tf.range(firsts[window], firsts[window] + sizes[window])
      return (key, blocks[window], positions,
              rows.mine(epoch, positions, num_train))

    def read(epoch, window):
      key, blocks, positions, mine = wanted(epoch, window)
      offsets, examples = order.window_order(key, window, blocks)
      serialized = _read_shards(paths, counts, blocks[blocks >= 0])
      return _parsed(tf.gather(serialized, offsets[mine]), examples[mine],
                     epoch, positions[mine])

    # One dataset of (epoch, window): the next epoch's first window is
    # read while the last one's rows are still going out.
    windows = tf.data.Dataset.range(rows.start // num_train, _EPOCHS).flat_map(
        lambda e: tf.data.Dataset.range(order.num_windows).map(
            lambda w: (e, w)))
    windows = windows.filter(lambda e, w: tf.reduce_any(wanted(e, w)[3]))
    return windows.map(read, num_parallel_calls=2).unbatch()

  def _eval_range(self, process_index: int, process_count: int):
    total = self.index['splits']['val']['num_examples']
    return (total * process_index // process_count,
            total * (process_index + 1) // process_count)

  def eval_shard_size(self, process_index: int, process_count: int) -> int:
    begin, end = self._eval_range(process_index, process_count)
    return end - begin

  def eval_records(self, process_index: int,
                   process_count: int) -> tf.data.Dataset:
    paths, counts = self._split('val')
    pieces = _pieces(counts, *self._eval_range(process_index, process_count))
    return _read_pieces(paths, counts, pieces)

  def _damaged(self, split: str, shards: Iterable[int]) -> Optional[str]:
    """'FILE: why; how to repair' of the first damaged one of `shards`."""
    for shard in dict.fromkeys(int(s) for s in shards):
      entry = self.index['splits'][split]['shards'][shard]
      path = storage.join(self.root, entry['file'])
      reason = shard_damage(path, entry['count'], entry.get('bytes'))
      if reason:
        return (f'{path}: {reason}; check and repair the prepared dataset '
                'with python -m alexnet_jax.tools.prepare --config=CONFIG '
                f'--out={self.root} --verify (CONFIG: the config that '
                'prepared it)')
    return None

  def damaged_train_shard(self, seed: int, epoch: int,
                          position: int) -> Optional[str]:
    """The first damaged shard, checked in the order the pipeline reads
    them from `position` of `epoch` on, then the others."""
    blocks, firsts, sizes = self.order.windows(
        _order_key(seed, tf.constant(epoch, tf.int64)))
    ahead = (firsts + sizes > position).numpy()
    shards = blocks.numpy()[ahead].ravel()
    return self._damaged('train', [*shards[shards >= 0],
                                   *range(len(self.order.block_sizes))])

  def damaged_eval_shard(self, process_index: int,
                         process_count: int) -> Optional[str]:
    """The first damaged shard of this process's evaluation share."""
    _, counts = self._split('val')
    pieces = _pieces(counts, *self._eval_range(process_index, process_count))
    return self._damaged('val', pieces[:, 0])


def read_prepared_index(root: str) -> dict:
  """DIR/index.json of a prepared dataset; a clear error if incomplete."""
  path = storage.join(root, PREPARED_INDEX)
  if not storage.exists(path):
    raise FileNotFoundError(
        f'{path} not found: run `python -m alexnet_jax.tools.prepare '
        f'--out={root}` (to the end, on every host) first')
  index = storage.read_json(path)
  for split in index['splits'].values():
    for shard in split['shards']:
      name = shard['file']
      if os.path.basename(name) != name or name.startswith('.'):
        raise ValueError(f'{path}: shard {name!r} is not a file name in '
                         f'{root}; refusing to read outside it')
  return index


@functools.lru_cache(maxsize=8)
def _prepared_source(root: str) -> _PreparedSource:
  index = read_prepared_index(root)
  for split in ('train', 'val'):
    if not index['splits'][split]['num_examples']:
      raise ValueError(f'prepared dataset {root}: split {split!r} holds no '
                       'images')
  return _PreparedSource(root, index)


def check_prepared_matches(config, index: dict) -> None:
  """Stops when the stored base images are not the configured ones."""
  resize = config.input.resize_size
  if index['resize_size'] != resize or index['antialias'] != (
      config.input.antialias):
    raise ValueError(
        f'{config.dataset}: prepared at resize_size {index["resize_size"]}, '
        f'antialias {index["antialias"]}; the config asks for {resize}, '
        f'{config.input.antialias} (prepare again or change the config)')


@dataclasses.dataclass(frozen=True)
class _TfdsSource:
  """A prepared TFDS image-classification dataset, read without decoding."""
  builder: Any
  shuffle_buffer: int
  checks_bytes = True
  # Epochs are separate TFDS datasets, chained this many at a time.
  epochs_per_dataset = 4
  global_order = False  # Each process reads a fixed share.

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self.builder.info.features['label'].names)

  @property
  def num_classes(self) -> int:
    return self.builder.info.features['label'].num_classes

  @property
  def num_train(self) -> int:
    return self.builder.info.splits['train'].num_examples

  @property
  def _eval_split(self) -> str:
    return 'validation' if 'validation' in self.builder.info.splits else 'test'

  def _read(self, split: str, *, seed: Optional[int]) -> tf.data.Dataset:
    read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=16)
    ds = self.builder.as_dataset(
        split=split, shuffle_files=seed is not None, read_config=read_config,
        decoders={'image': tfds.decode.SkipDecoding()})
    if seed is not None:
      ds = ds.shuffle(self.shuffle_buffer, seed=seed)
    return ds

  def _train_split(self, process_index: int, process_count: int) -> str:
    return tfds.split_for_jax_process('train', process_index=process_index,
                                      process_count=process_count,
                                      drop_remainder=True)

  def train_shard_size(self, process_count: int) -> int:
    split = self._train_split(0, process_count)
    return self.builder.info.splits[split].num_examples

  def train_records(self, seed: int, first_epoch: int, start: int,
                    process_index: int, process_count: int) -> tf.data.Dataset:
    """A few epochs from (first_epoch, start); finite, unlike the others.

    A resumed run reads (without decoding) the `start` records it skips.
    """
    split = self._train_split(process_index, process_count)
    ds = None
    for epoch in range(first_epoch, first_epoch + self.epochs_per_dataset):
      epoch_seed = int(np.random.default_rng([seed, epoch]).integers(2**31))
      skip = start if epoch == first_epoch else 0
      part = self._read(split, seed=epoch_seed).skip(skip).enumerate(skip)
      part = part.map(functools.partial(
          _tfds_record, epoch=epoch, shard=process_index,
          shards=process_count))
      ds = part if ds is None else ds.concatenate(part)
    return ds

  def first_skips(self, seed: int, epoch: int, positions: np.ndarray,
                  process_index: int, process_count: int) -> int:
    """Files skipped at `positions` that were not skipped before: a process
    reads the same share in every epoch, so those of epoch 0."""
    del seed, process_index, process_count  # The share is fixed.
    return len(positions) if epoch == 0 else 0

  def _eval_subsplit(self, process_index: int, process_count: int) -> str:
    return tfds.even_splits(self._eval_split, process_count)[process_index]

  def eval_shard_size(self, process_index: int, process_count: int) -> int:
    split = self._eval_subsplit(process_index, process_count)
    return self.builder.info.splits[split].num_examples

  damaged_train_shard = _FolderSource.damaged_train_shard
  damaged_eval_shard = _FolderSource.damaged_eval_shard

  def eval_records(self, process_index: int,
                   process_count: int) -> tf.data.Dataset:
    ds = self._read(self._eval_subsplit(process_index, process_count),
                    seed=None)
    return ds.enumerate().map(functools.partial(_tfds_record, epoch=0))


def _tfds_record(position: tf.Tensor, example: dict, *, epoch: int,
                 shard: int = 0, shards: int = 1) -> dict:
  """A record at `position` of input shard `shard`; its index, which keys
  its augmentation, is unique over the shards."""
  return _records(example['image'], example['label'],
                  position * shards + shard, tf.constant(epoch, tf.int64),
                  position)


def _tfds_data_dir(config) -> str:
  return storage.check_location(
      config.get('data_dir') or os.environ.get('TFDS_DATA_DIR')
      or '~/tensorflow_datasets', 'config.data_dir')


def tfds_builder(config):
  """The TFDS builder of config.dataset (not necessarily prepared)."""
  return tfds.builder(config.dataset, data_dir=_tfds_data_dir(config))


def prepare_tfds(config) -> None:
  """Runs TFDS's download_and_prepare (once, on one process); a clear error
  if ImageNet's tars are absent."""
  builder = tfds_builder(config)
  if builder.is_prepared():
    return
  data_dir = _tfds_data_dir(config)
  manual_dir = storage.join(data_dir, 'downloads', 'manual')
  if config.dataset.split(':')[0].split('/')[0] == 'imagenet2012':
    missing = [f for f in _IMAGENET_MANUAL_FILES
               if not storage.exists(storage.join(manual_dir, f))]
    if missing:
      raise FileNotFoundError(
          f'ImageNet ({config.dataset}) is not prepared in {data_dir}. '
          f'Download {" and ".join(_IMAGENET_MANUAL_FILES)} from '
          f'https://image-net.org and put them into {manual_dir}/ '
          f'(missing: {", ".join(missing)}); the first run then prepares '
          'the dataset (hours). Set config.data_dir or TFDS_DATA_DIR to '
          'use another directory, or use --config.dataset=synthetic.')
    logging.info('Preparing %s from %s (this takes hours).', config.dataset,
                 manual_dir)
  builder.download_and_prepare()


def _tfds_source(config) -> _TfdsSource:
  """The TFDS builder, prepared first by a single-process run.

  Several processes would all prepare it at once: they stop and ask for
  the explicit step instead.
  """
  builder = tfds_builder(config)
  if not builder.is_prepared():
    if jax.process_count() > 1:
      raise FileNotFoundError(
          f'{config.dataset} is not prepared in {_tfds_data_dir(config)}; '
          'a multi-process run does not prepare it (every process would, at '
          'once): run `python -m alexnet_jax.tools.prepare --config=CONFIG '
          '--tfds_only` once, on one host, first')
    prepare_tfds(config)  # A clear error if the manual files are missing.
  return _TfdsSource(builder, config.input.shuffle_buffer)


def is_tfds(config) -> bool:
  """Whether config.dataset names a TFDS dataset."""
  return not (config.dataset == 'synthetic' or
              config.dataset.startswith(('folder:', 'prepared:')))


def from_config(config):
  """The source that config.dataset names (listed or opened once)."""
  dataset = config.dataset
  if dataset == 'synthetic':
    return _folder_source(synthetic.generate_from_config(config))
  if dataset.startswith('folder:'):
    return _folder_source(storage.check_location(
        dataset[len('folder:'):], 'config.dataset'))
  if dataset.startswith('prepared:'):
    source = _prepared_source(storage.check_location(
        dataset[len('prepared:'):], 'config.dataset'))
    check_prepared_matches(config, source.index)
    return source
  return _tfds_source(config)


def num_classes(config) -> int:
  """The number of classes of the configured dataset."""
  return from_config(config).num_classes


def class_names(config) -> tuple[str, ...]:
  """The configured dataset's class names, in label order."""
  return from_config(config).class_names


def num_train_examples(config) -> int:
  """The number of training examples in the whole dataset (all processes)."""
  return from_config(config).num_train
