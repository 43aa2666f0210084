"""The tf.data input pipeline: sources, decoding, augmentation, batching.

Sources (`config.dataset`): a TFDS name (default `imagenet2012`, manual
download), `folder:ROOT` (ImageNet's raw layout, `ROOT/{train,val}/<class>/`)
or `synthetic` (generated once, then read as a folder). After the source is
chosen every example is a record {'encoded', 'label', 'index'} and follows
one path: a graph-only validity check, decode, preprocess, batch.

Determinism and resumption: epoch `e` visits this process's examples in an
order fixed by (seed, e); augmentation randomness comes from stateless ops
seeded by (seed, process, e, index), so it does not depend on where the
pipeline started. The train iterator's state is the position after the last
batch returned to the caller; restoring skips the file list (or, for TFDS,
the undecoded records) to that position.

Undecodable files (zero bytes, truncated, not an image) are dropped: a cheap
graph check on the bytes catches the usual cases before decoding, and
`ignore_errors` catches whatever else fails. Both are counted exactly
because every example carries its raw index: a gap between the raw position
consumed and the examples returned is a skipped file.

The host does the uint8 work: training crops are cut and flipped in uint8
and carry their PCA lighting offset and crop position; evaluation sends the
whole resize_size base image. The float work (lighting, mean, std, scale,
channel order; the evaluation crops) runs in the compiled steps, in
`data/device.py`.

Batches are local numpy arrays of `global_batch // process_count` examples;
`to_global` and `prefetch_to_device` turn them into global `jax.Array`s.
"""

import dataclasses
import functools
import json
import os
import queue
import threading
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import synthetic
from alexnet_jax.data import device

tf.config.set_visible_devices([], 'GPU')

_AUTOTUNE = tf.data.AUTOTUNE
_IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


def model_input_size(config) -> int:
  """The model's square input side: 227 for the Caffe variant, else 224."""
  if config.model.get('input_size') is not None:
    return config.model.input_size
  return 227 if config.model.variant == 'caffe' else 224


# ---------------------------------------------------------------------------
# Sources.
#
# Every source gives each process a fixed share of the training set (the
# same files in every epoch) and visits it, epoch after epoch, in blocks:
# the order of the blocks and the order inside each block are drawn from
# (seed, process, epoch). A folder's share is one block; a prepared dataset's
# blocks are the pieces of its shard files, so a resumed run skips whole
# shards by their counts and reads (without decoding) at most one.

_EPOCHS = 2**62  # "Forever": the train datasets are infinite.
_READ_BUFFER = 8 << 20  # TFRecord read buffer: few, large reads.


def _order_key(seed: int, process_index: int, epoch: tf.Tensor) -> tf.Tensor:
  """The key of an epoch's order (augmentation keys fold in indices >= 0)."""
  key = tf.constant([seed, process_index], tf.int64)
  key = tf.random.experimental.stateless_fold_in(key, epoch)
  return tf.random.experimental.stateless_fold_in(key, -1)


def _block_permutation(key: tf.Tensor, block: tf.Tensor,
                       size: tf.Tensor) -> tf.Tensor:
  """The order of a block's `size` examples in the epoch of `key`."""
  return tf.random.experimental.stateless_shuffle(
      tf.range(tf.cast(size, tf.int64)),
      tf.random.experimental.stateless_fold_in(key, block))


def _epoch_blocks(key: tf.Tensor, block_sizes: np.ndarray, skip: tf.Tensor):
  """The epoch's blocks in order from position `skip` on: (block, examples
  to skip in it, position in the epoch of its first example read).

  Whole blocks before position `skip` are dropped by their sizes, unread.
  """
  sizes = tf.constant(block_sizes, tf.int64)
  order = tf.random.experimental.stateless_shuffle(
      tf.range(len(block_sizes), dtype=tf.int64), key)
  ends = tf.cumsum(tf.gather(sizes, order))
  first = tf.reduce_sum(tf.cast(ends <= skip, tf.int64))
  begins = (ends - tf.gather(sizes, order))[first:]
  return order[first:], tf.maximum(skip - begins, 0), tf.maximum(begins, skip)


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


def _records(encoded, label, index, epoch) -> dict:
  return {'encoded': encoded, 'label': tf.cast(label, tf.int32),
          'index': tf.cast(index, tf.int64), 'epoch': tf.cast(epoch, tf.int64)}


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

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_train(self) -> int:
    return len(self.train_paths)

  def train_shard_size(self, process_count: int) -> int:
    return self.num_train // process_count

  def epoch_order(self, seed: int, epoch) -> tf.Tensor:
    """Epoch `epoch`'s order of all files, the same for every process."""
    epoch = tf.cast(epoch, tf.int64)  # As in the pipeline: keys hash dtypes.
    return _block_permutation(_order_key(seed, 0, epoch),
                              tf.constant(0, tf.int64), self.num_train)

  def train_records(self, seed: int, first_epoch: int, start: int,
                    process_index: int, process_count: int) -> tf.data.Dataset:
    """Every process_count-th file of each epoch's order, epoch after epoch.

    Records {'encoded', 'label', 'index', 'epoch'}, 'index' being the
    position in this process's epoch. A global batch holds the same files
    on any number of processes.
    """
    size = self.train_shard_size(process_count)
    paths = tf.constant(self.train_paths.astype(str))
    labels = tf.constant(self.train_labels)

    def epoch_records(epoch, skip):
      order = self.epoch_order(seed, epoch)[process_index::process_count]
      order = order[skip:size]
      return tf.data.Dataset.from_tensor_slices(
          (tf.gather(paths, order), tf.gather(labels, order),
           tf.range(skip, size), tf.fill(tf.shape(order), epoch)))

    ds = _over_epochs(epoch_records, first_epoch, start)
    return ds.map(lambda p, y, i, e: _records(tf.io.read_file(p), y, i, e),
                  num_parallel_calls=_AUTOTUNE)

  def first_skips(self, seed: int, epoch: int, positions: np.ndarray,
                  process_index: int, process_count: int) -> int:
    """How many of the files skipped at `positions` of this process's epoch
    no process read in an earlier epoch (each bad file counts once).

    Every epoch reads all files but the last num_train % process_count of
    its order, so a file is new only in epoch 0 or if it was left out of
    every epoch before.
    """
    files = self.epoch_order(seed, epoch).numpy()[
        process_index + process_count * positions]
    read = self.train_shard_size(process_count) * process_count
    new = np.ones(len(files), bool)
    for earlier in range(epoch):
      new &= np.isin(files, self.epoch_order(seed, earlier).numpy()[read:])
      if not new.any():
        break
    return int(new.sum())

  def eval_shard_size(self, process_index: int, process_count: int) -> int:
    return len(self.eval_paths[process_index::process_count])

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
    directory = os.path.join(split_dir, name)
    if not os.path.isdir(directory):
      continue
    names = sorted(e.name for e in os.scandir(directory)
                   if e.is_file() and not e.name.startswith('.'))
    paths += [os.path.join(directory, n) for n in names]
    labels += [label] * len(names)
  return np.array(paths, dtype=object), np.array(labels, dtype=np.int32)


def _check_split_layout(split: str, split_dir: str, count: int) -> None:
  """A one-line error for a split without images in class folders."""
  if count:
    return
  loose = sum(1 for e in os.scandir(split_dir)
              if e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES))
  found = (f'{loose} images directly in it but no class folders' if loose
           else 'no images in class folders')
  raise ValueError(
      f'folder dataset, split {split!r}: {split_dir} has {found}; expected '
      f'{split_dir}/<class>/<image> with the class folders of train/ '
      '(README, "Data", shows how to arrange ImageNet\'s validation set)')


@functools.lru_cache(maxsize=8)
def _folder_source(root: str) -> _FolderSource:
  train_dir, val_dir = os.path.join(root, 'train'), os.path.join(root, 'val')
  for d in (train_dir, val_dir):
    if not os.path.isdir(d):
      raise FileNotFoundError(
          f'folder dataset {root!r} needs {d}/<class>/<images>.')
  class_names = tuple(sorted(e.name for e in os.scandir(train_dir)
                             if e.is_dir() and not e.name.startswith('.')))
  unknown = {e.name for e in os.scandir(val_dir) if e.is_dir()} - set(
      class_names)
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


def _read_pieces(paths: tf.Tensor, pieces: np.ndarray, blocks, epoch,
                 order_key: Optional[tf.Tensor]) -> tf.data.Dataset:
  """Records of the pieces `blocks` = (piece, examples to skip, position of
  the first example read), in `order_key`'s order inside each (if any).

  Each piece's shard file is read whole, without decoding, and its
  examples are taken in the block's order. Two blocks are read at a time,
  in order; everything is done per block, nothing per example.
  """
  table = tf.constant(pieces, tf.int64)

  def read(block, skip, position):
    shard, first, size = tf.unstack(table[block])
    if order_key is None:
      order = tf.range(size)
    else:
      order = _block_permutation(order_key, block, size)
    serialized = tf.data.TFRecordDataset(
        paths[shard], buffer_size=_READ_BUFFER).batch(
            2**31 - 1).get_single_element()
    examples = tf.io.parse_example(
        tf.gather(serialized, order[skip:] + first), PREPARED_FEATURES)
    count = size - skip
    return _records(examples['image'], examples['label'],
                    tf.range(position, position + count),
                    tf.fill([count], tf.cast(epoch, tf.int64)))

  ds = tf.data.Dataset.from_tensor_slices(blocks)
  return ds.map(read, num_parallel_calls=2).unbatch()


@dataclasses.dataclass(frozen=True)
class _PreparedSource:
  """Base images stored by `alexnet_jax.prepare` as TFRecord shards."""
  root: str
  index: dict
  checks_bytes = False  # Every stored image was encoded by prepare.
  epochs_per_dataset = _EPOCHS

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self.index['class_names'])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def _split(self, split: str):
    shards = self.index['splits'][split]['shards']
    paths = tf.constant([os.path.join(self.root, s['file']) for s in shards])
    return paths, np.array([s['count'] for s in shards], np.int64)

  @property
  def num_train(self) -> int:
    return self.index['splits']['train']['num_examples']

  def train_shard_size(self, process_count: int) -> int:
    return self.num_train // process_count

  def train_records(self, seed: int, first_epoch: int, start: int,
                    process_index: int, process_count: int) -> tf.data.Dataset:
    """This process's contiguous range of the shards, epoch after epoch."""
    size = self.train_shard_size(process_count)
    paths, counts = self._split('train')
    pieces = _pieces(counts, process_index * size, (process_index + 1) * size)

    def epoch_records(epoch, skip):
      key = _order_key(seed, process_index, epoch)
      return _read_pieces(paths, pieces, _epoch_blocks(key, pieces[:, 2], skip),
                          epoch, key)

    return _over_epochs(epoch_records, first_epoch, start)

  def first_skips(self, seed: int, epoch: int, positions: np.ndarray,
                  process_index: int, process_count: int) -> int:
    """Files skipped at `positions` that were not skipped before: a process
    reads the same share in every epoch, so those of epoch 0."""
    del seed, process_index, process_count  # The share is fixed.
    return len(positions) if epoch == 0 else 0

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
    blocks = (np.arange(len(pieces)), np.zeros(len(pieces), np.int64),
              np.cumsum(pieces[:, 2]) - pieces[:, 2])
    return _read_pieces(paths, pieces, blocks, 0, None)


def read_prepared_index(root: str) -> dict:
  """DIR/index.json of a prepared dataset; a clear error if incomplete."""
  path = os.path.join(root, PREPARED_INDEX)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f'{path} not found: run `python -m alexnet_jax.prepare --out={root}` '
        '(to the end, on every host) first')
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


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
      part = part.map(functools.partial(_tfds_record, epoch=epoch))
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

  def eval_records(self, process_index: int,
                   process_count: int) -> tf.data.Dataset:
    ds = self._read(self._eval_subsplit(process_index, process_count),
                    seed=None)
    return ds.enumerate().map(functools.partial(_tfds_record, epoch=0))


def _tfds_record(index: tf.Tensor, example: dict, *, epoch: int) -> dict:
  return _records(example['image'], example['label'], index,
                  tf.constant(epoch, tf.int64))


def _tfds_data_dir(config) -> str:
  return (config.get('data_dir') or os.environ.get('TFDS_DATA_DIR') or
          os.path.expanduser('~/tensorflow_datasets'))


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
  manual_dir = os.path.join(data_dir, 'downloads', 'manual')
  if config.dataset.split(':')[0].split('/')[0] == 'imagenet2012':
    missing = [f for f in _IMAGENET_MANUAL_FILES
               if not os.path.exists(os.path.join(manual_dir, f))]
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
          'once): run `python -m alexnet_jax.prepare --config=CONFIG '
          '--tfds_only` once, on one host, first')
    prepare_tfds(config)  # A clear error if the manual files are missing.
  return _TfdsSource(builder, config.input.shuffle_buffer)


def is_tfds(config) -> bool:
  """Whether config.dataset names a TFDS dataset."""
  return not (config.dataset == 'synthetic' or
              config.dataset.startswith(('folder:', 'prepared:')))


def _source(config):
  dataset = config.dataset
  if dataset == 'synthetic':
    return _folder_source(synthetic.generate_from_config(config))
  if dataset.startswith('folder:'):
    return _folder_source(os.path.abspath(
        os.path.expanduser(dataset[len('folder:'):])))
  if dataset.startswith('prepared:'):
    root = dataset[len('prepared:'):]
    if '://' not in root:
      root = os.path.abspath(os.path.expanduser(root))
    source = _prepared_source(root)
    check_prepared_matches(config, source.index)
    return source
  return _tfds_source(config)


def num_classes(config) -> int:
  """The number of classes of the configured dataset."""
  return _source(config).num_classes


def num_train_examples(config) -> int:
  """The number of training examples in the whole dataset (all processes)."""
  return _source(config).num_train


# ---------------------------------------------------------------------------
# Decoding.

_JPEG_TAIL = 16_384
_MAGIC = {
    'jpeg': b'\xff\xd8\xff',
    'png': b'\x89PNG\r\n\x1a\n',
    'gif': b'GIF8',
    'bmp': b'BM',
}


def _has_magic(contents: tf.Tensor, magic: bytes, at: int = 0) -> tf.Tensor:
  """Whether `magic` occurs at byte `at` (False for shorter contents)."""
  head = tf.strings.join([tf.strings.substr(contents, 0, 16), b'\0' * 16])
  return tf.equal(tf.strings.substr(head, at, len(magic)), magic)


def is_jpeg(contents: tf.Tensor) -> tf.Tensor:
  return _has_magic(contents, _MAGIC['jpeg'])


def _jpeg_is_complete(contents: tf.Tensor) -> tf.Tensor:
  """An end-of-image marker follows the last start-of-scan marker.

  Only the file's tail is searched, which keeps the check cheap: a truncated
  JPEG ends inside scan data, with no end marker after its last scan start;
  a complete one ends with its end marker (or up to ~16 KB after it).
  """
  length = tf.strings.length(contents)
  tail = tf.strings.substr(contents, tf.maximum(length - _JPEG_TAIL, 0),
                           _JPEG_TAIL)
  data = tf.io.decode_raw(tail, tf.uint8)
  marker = tf.equal(data[:-1], 0xFF)
  positions = tf.range(tf.shape(data)[0] - 1)
  last = lambda code: tf.reduce_max(tf.where(
      marker & tf.equal(data[1:], code), positions, -1))
  return last(0xD9) > last(0xDA)


def _png_is_complete(contents: tf.Tensor) -> tf.Tensor:
  """The file ends with the IEND chunk (type, then a 4-byte CRC)."""
  length = tf.strings.length(contents)
  tail = tf.strings.substr(contents, tf.maximum(length - 8, 0), 4)
  return tf.equal(tail, b'IEND')


def is_decodable(contents: tf.Tensor) -> tf.Tensor:
  """A graph-only check that `contents` is a complete, decodable image.

  Recognises JPEG, PNG, GIF, BMP and WebP by their magic bytes, whatever the
  file is called, and rejects truncated JPEGs and PNGs, empty files and
  anything else. Files that pass but still fail to decode are caught later
  by `ignore_errors` (and counted all the same).
  """
  webp = _has_magic(contents, b'RIFF') & _has_magic(contents, b'WEBP', 8)
  return tf.case(
      [(is_jpeg(contents), lambda: _jpeg_is_complete(contents)),
       (_has_magic(contents, _MAGIC['png']),
        lambda: _png_is_complete(contents))],
      default=lambda: (_has_magic(contents, _MAGIC['gif']) |
                       _has_magic(contents, _MAGIC['bmp']) | webp))


def decode_rgb(contents: tf.Tensor) -> tf.Tensor:
  """Decodes any supported image (grayscale, CMYK, PNG, ...) to uint8 RGB."""
  image = tf.io.decode_image(contents, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _centre_square(height: tf.Tensor, width: tf.Tensor):
  """(top, left, side) of the centred square on the shorter side."""
  side = tf.minimum(height, width)
  return (height - side) // 2, (width - side) // 2, side


def _decoded_square(contents: tf.Tensor):
  """The decoded image's centre square (uint8) and its side."""
  image = decode_rgb(contents)
  shape = tf.shape(image)
  top, left, side = _centre_square(shape[0], shape[1])
  return tf.image.crop_to_bounding_box(image, top, left, side, side), side


def _resized(square: tf.Tensor, resize_size: int,
             antialias: bool) -> tf.Tensor:
  image = tf.image.resize(square, [resize_size, resize_size],
                          method='bilinear', antialias=antialias)
  return tf.clip_by_value(image, 0.0, 255.0)


def base_image_float(contents: tf.Tensor, resize_size: int,
                     antialias: bool = True) -> tf.Tensor:
  """The paper's base image before rounding: float32 [R, R, 3], 0..255.

  Shorter side to R = resize_size by a bilinear (by default antialiased)
  resize, centre R x R square. The square is cut from the original before
  resizing, which is the same image as resizing first, without the wasted
  work; an image that is already R x R is left as it is.
  """
  square, side = _decoded_square(contents)
  image = tf.cond(tf.equal(side, resize_size),
                  lambda: tf.cast(square, tf.float32),
                  lambda: _resized(square, resize_size, antialias))
  image.set_shape([resize_size, resize_size, 3])
  return image


def base_image(contents: tf.Tensor, resize_size: int,
               antialias: bool = True) -> tf.Tensor:
  """`base_image_float` rounded to uint8 [R, R, 3]: what both the raw path
  and `alexnet_jax.prepare` start from.

  A stored (already R x R) base image is only decoded.
  """
  square, side = _decoded_square(contents)
  image = tf.cond(
      tf.equal(side, resize_size), lambda: square,
      lambda: to_uint8(_resized(square, resize_size, antialias)))
  image.set_shape([resize_size, resize_size, 3])
  return image


def base_crop(contents: tf.Tensor, resize_size: int, offset: tf.Tensor,
              crop_size: int, antialias: bool = True) -> tf.Tensor:
  """`base_image(...)[y:y+crop, x:x+crop]` for `offset` (y, x), uint8.

  With the antialiased resize only the crop's window of the base image is
  computed (TF's resize is a ScaleAndTranslate; a translated, smaller output
  grid is the same function for about 30% less work). The vectorised
  kernel's rounding depends on a pixel's place in the grid, so about 0.1% of
  the pixels differ from the whole base image's by one level.
  """
  if not antialias:
    return crop(base_image(contents, resize_size, antialias), offset,
                crop_size)
  square, side = _decoded_square(contents)

  def window():
    scale = (tf.constant(resize_size, tf.float32) /
             tf.cast(tf.stack([side, side]), tf.float32))
    image = tf.raw_ops.ScaleAndTranslate(
        images=tf.cast(square, tf.float32)[None],
        size=tf.constant([crop_size, crop_size]), scale=scale,
        translation=-tf.cast(offset, tf.float32), kernel_type='triangle',
        antialias=True)
    return to_uint8(image[0])

  image = tf.cond(tf.equal(side, resize_size),
                  lambda: crop(square, offset, crop_size), window)
  image.set_shape([crop_size, crop_size, 3])
  return image


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds 0..255 floats to uint8."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def decode_resized(contents: tf.Tensor, resize_size: int,
                   antialias: bool = True) -> tf.Tensor:
  """`base_image` as float32 on the [0, 1] scale."""
  return tf.cast(base_image(contents, resize_size, antialias),
                 tf.float32) / 255.0


def decode_crop_window(contents: tf.Tensor, resize_size: int, crop_size: int,
                       offset: tf.Tensor, antialias: bool = True) -> tf.Tensor:
  """Approximates `decode_resized(...)[y:y+crop, x:x+crop]` cheaply.

  Maps the crop window at `offset` (y, x) of the resize_size square back to
  the original image, decodes only that window (tf.io.decode_and_crop_jpeg;
  other formats decode fully and crop) and resizes it once to crop_size.
  It differs from the exact path by rounding the window to whole source
  pixels and by resampling once instead of twice, so pixel values differ
  slightly; the content and geometry are the same.
  """
  def window(shape):
    top, left, side = _centre_square(shape[0], shape[1])
    scale = tf.cast(side, tf.float32) / resize_size
    size = tf.maximum(1, tf.cast(tf.round(crop_size * scale), tf.int32))
    size = tf.minimum(size, side)
    start = tf.cast(tf.round(tf.cast(offset, tf.float32) * scale), tf.int32)
    start = tf.minimum(start, side - size) + tf.stack([top, left])
    return tf.stack([start[0], start[1], size, size])

  def jpeg():
    return tf.io.decode_and_crop_jpeg(
        contents, window(tf.io.extract_jpeg_shape(contents)), channels=3)

  def other():
    image = decode_rgb(contents)
    return tf.image.crop_to_bounding_box(
        image, *tf.unstack(window(tf.shape(image)[:2])))

  image = tf.cond(is_jpeg(contents), jpeg, other)
  image.set_shape([None, None, 3])
  image = tf.image.resize(image, [crop_size, crop_size], method='bilinear',
                          antialias=antialias)
  return tf.clip_by_value(image, 0.0, 255.0) / 255.0


# ---------------------------------------------------------------------------
# Preprocessing ops.


def random_crop_offset(seed: tf.Tensor, image_size: int,
                       crop_size: int) -> tf.Tensor:
  """A uniform (y, x) offset of a crop_size window inside image_size."""
  return tf.random.stateless_uniform([2], seed, minval=0,
                                     maxval=image_size - crop_size + 1,
                                     dtype=tf.int32)


def crop(image: tf.Tensor, offset: tf.Tensor, crop_size: int) -> tf.Tensor:
  return tf.image.crop_to_bounding_box(image, offset[0], offset[1], crop_size,
                                       crop_size)


def random_flip(image: tf.Tensor,
                seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Flips left-right with probability 1/2; also returns whether it did."""
  flipped = tf.random.stateless_uniform([], seed) < 0.5
  image = tf.cond(flipped, lambda: tf.reverse(image, axis=[-2]),
                  lambda: image)
  return image, flipped


def pca_lighting(seed: tf.Tensor, sigma: float, eigval: np.ndarray,
                 eigvec: np.ndarray, convention: str) -> tf.Tensor:
  """The paper's per-image RGB shift along the colour PCA axes, [3].

  `eigval`/`eigvec` (columns) describe the RGB covariance of [0, 1] pixels.
  'variance': eigvec @ (alpha * eigval), the common ImageNet form.
  'stddev': eigvec @ (alpha * sqrt(eigval)), cuda-convnet's form; on 0..255
  pixels that is alpha * sqrt of the 0..255-scale eigenvalue. The device
  adds it to every pixel of the image on the [0, 1] scale.
  """
  alpha = tf.random.stateless_normal([3], seed, stddev=sigma)
  if convention == 'variance':
    scale = tf.constant(eigval, tf.float32)
  elif convention == 'stddev':
    scale = tf.sqrt(tf.constant(eigval, tf.float32))
  else:
    raise ValueError(f'unknown pca_convention {convention!r}')
  return tf.linalg.matvec(tf.constant(eigvec, tf.float32), alpha * scale)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Pixels on the [0, 1] scale as uint8 (rounded); uint8 passes through."""
  if image.dtype == tf.uint8:
    return image
  return tf.cast(tf.round(image * 255.0), tf.uint8)


def _element_seed(seed: int, process_index: int, epoch: int,
                  index: tf.Tensor) -> tf.Tensor:
  key = tf.constant([seed, process_index], tf.int64)
  key = tf.random.experimental.stateless_fold_in(key, epoch)
  return tf.random.experimental.stateless_fold_in(key, index)


def make_train_preprocess(config, *, seed: int, process_index: int,
                          epoch: int) -> Callable[[dict], dict]:
  """The host's share of the training transform of one record.

  Returns the uint8 crop, flipped or not, its PCA lighting offset and where
  it lies ('crop': y, x, flipped); `data.device.train_images` does the
  float work in the compiled step. Every draw is keyed by (seed, process,
  epoch, index).
  """
  inp = config.input
  size, resize = model_input_size(config), inp.resize_size
  stats = device.input_stats(config)

  def preprocess(record):
    crop_seed, flip_seed, pca_seed = tf.unstack(
        tf.random.experimental.stateless_split(
            _element_seed(seed, process_index, epoch, record['index']), 3))
    if inp.random_crop:
      offset = random_crop_offset(crop_seed, resize, size)
    else:
      offset = tf.fill([2], (resize - size) // 2)
    if inp.decode_and_crop:
      image = decode_crop_window(record['encoded'], resize, size, offset,
                                 inp.antialias)
    else:
      image = base_crop(record['encoded'], resize, offset, size,
                        inp.antialias)
    image = _to_uint8(image)
    image.set_shape([size, size, 3])
    flipped = tf.constant(False)
    if inp.random_flip:
      image, flipped = random_flip(image, flip_seed)
    if inp.pca_lighting_sigma > 0:
      lighting = pca_lighting(pca_seed, inp.pca_lighting_sigma,
                              stats['eigval'], stats['eigvec'],
                              inp.pca_convention)
    else:
      lighting = tf.zeros([3], tf.float32)
    where = tf.concat([offset, tf.cast(flipped, tf.int32)[None]], 0)
    return {'image': image, 'lighting': lighting, 'crop': where,
            'label': record['label'], 'index': record['index']}

  return preprocess


def make_eval_preprocess(config) -> Callable[[dict], dict]:
  """The uint8 resize_size base image; the device cuts the crops."""
  resize = config.input.resize_size

  def preprocess(record):
    image = base_image(record['encoded'], resize, config.input.antialias)
    image.set_shape([resize, resize, 3])
    return {'image': image, 'label': record['label'], 'index': record['index']}

  return preprocess


def _decodable_only(ds: tf.data.Dataset,
                    give_up_after: Optional[int] = None) -> tf.data.Dataset:
  """Drops records whose bytes fail `is_decodable` (checked in parallel).

  With `give_up_after`, stops with an error after that many undecodable
  records in a row (a whole epoch without an image would never end).
  """
  ds = ds.map(lambda r: (is_decodable(r['encoded']), r),
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


def train_records(config, *, epoch: int = 0) -> tf.data.Dataset:
  """Epoch `epoch`'s undecoded records {'encoded', 'label', 'index'}."""
  source = _source(config)
  ds = source.train_records(config.seed, epoch, 0, 0, 1)
  return ds.take(source.train_shard_size(1))


def base_images(config, *, max_images: Optional[int] = None
                ) -> tf.data.Dataset:
  """Decodable training images at resize_size (float32, [0, 1]), for stats.

  In epoch 0's shuffled order, so that `max_images` takes a fair sample.
  """
  ds = train_records(config)
  if max_images is not None:
    ds = ds.take(max_images)
  ds = _decodable_only(ds)
  resize, antialias = config.input.resize_size, config.input.antialias
  ds = map_dropping_undecodable(
      ds, lambda r: decode_resized(r['encoded'], resize, antialias))
  return ds.with_options(_options())


# ---------------------------------------------------------------------------
# Iterators.


def _local_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f'batch size {batch_size} is not divisible by '
                     f'{process_count} processes.')
  return batch_size // process_count


class DataReadError(OSError):
  """The input files could not be read (not: an image could not be decoded)."""


_READ_ATTEMPTS = 3
_NOT_READ_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError)


def _train_example(config, seed: int, process_index: int,
                   record: dict) -> dict:
  preprocess = make_train_preprocess(config, seed=seed,
                                     process_index=process_index,
                                     epoch=record['epoch'])
  return dict(preprocess(record), epoch=record['epoch'],
              index=record['index'])


class TrainIterator:
  """An infinite iterator of local training batches that can be resumed.

  `get_state()` is the position after the last batch returned; `set_state`
  restores it, so a resumed run sees exactly the batches an uninterrupted one
  would. Batches span epoch boundaries; the epochs are one tf.data pipeline
  (a TFDS source: a few epochs per pipeline), so the next epoch's first
  images are ready before the last one ends.

  `num_skipped` (part of the state) counts the distinct undecodable files
  this process was the first to skip: a file that fails in every epoch
  counts once, and summed over processes each counts once. Files that
  cannot be read are retried from the last position, then stop the run
  with `DataReadError`.
  """

  retry_delay_s = 2.0

  def __init__(self, config, *, process_index: int = 0,
               process_count: int = 1):
    self._config = config
    self._source = _source(config)
    self._process_index = process_index
    self._process_count = process_count
    self._batch_size = _local_batch_size(config.batch_size, process_count)
    self._epoch_size = self._source.train_shard_size(process_count)
    if not self._epoch_size:
      raise ValueError('fewer training examples than processes.')
    self.set_state({'epoch': 0, 'next_index': 0})

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

  def _dataset(self) -> tf.data.Dataset:
    seed = self._config.seed
    epoch, start = self._start
    ds = self._source.train_records(seed, epoch, start, self._process_index,
                                    self._process_count)
    example = functools.partial(_train_example, self._config, seed,
                                self._process_index)
    if self._source.checks_bytes:
      ds = _decodable_only(ds, give_up_after=self._epoch_size)
      ds = map_dropping_undecodable(ds, example)
    else:
      ds = ds.map(example, num_parallel_calls=_AUTOTUNE)
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
        raise
      except tf.errors.OpError as error:
        message = error.message.strip().splitlines()[0]
        if attempt == _READ_ATTEMPTS:
          raise DataReadError(f'reading the training data failed '
                              f'{attempt} times: {message}') from None
        logging.warning('Reading the training data failed (%s); retrying '
                        'from the last batch.', message)
        time.sleep(self.retry_delay_s * attempt)
        self._restart(self._epoch, self._next_index)
    self._advance(batch['epoch'], batch['index'])
    return {k: batch[k] for k in device.TRAIN_KEYS}

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
    self._source = _source(config)
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

  def _dataset(self) -> tf.data.Dataset:
    ds = self._source.eval_records(self._process_index, self._process_count)
    preprocess = make_eval_preprocess(self._config)
    if self._source.checks_bytes:
      ds = map_dropping_undecodable(_decodable_only(ds), preprocess)
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
        raise DataReadError('reading the evaluation data failed: ' +
                            error.message.strip().splitlines()[0]) from None
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


# ---------------------------------------------------------------------------
# To device.


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
