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
import os
import queue
import threading
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


@dataclasses.dataclass(frozen=True)
class _FolderSource:
  """Files in ImageNet's raw layout, listed once."""
  train_paths: np.ndarray
  train_labels: np.ndarray
  eval_paths: np.ndarray
  eval_labels: np.ndarray
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_train(self) -> int:
    return len(self.train_paths)

  def train_shard_size(self, process_count: int) -> int:
    return self.num_train // process_count

  def train_records(self, seed: int, epoch: int, start: int,
                    process_index: int, process_count: int) -> tf.data.Dataset:
    """This process's share of epoch `epoch`, from position `start`."""
    order = np.random.default_rng([seed, epoch]).permutation(self.num_train)
    order = order[process_index::process_count]
    order = order[:self.train_shard_size(process_count)][start:]
    return _read_files(self.train_paths[order], self.train_labels[order],
                       start)

  def eval_shard_size(self, process_index: int, process_count: int) -> int:
    return len(self.eval_paths[process_index::process_count])

  def eval_records(self, process_index: int,
                   process_count: int) -> tf.data.Dataset:
    return _read_files(self.eval_paths[process_index::process_count],
                       self.eval_labels[process_index::process_count], 0)


def _read_files(paths: np.ndarray, labels: np.ndarray,
                first_index: int) -> tf.data.Dataset:
  indices = np.arange(first_index, first_index + len(paths), dtype=np.int64)
  ds = tf.data.Dataset.from_tensor_slices(
      (paths.astype(str), labels.astype(np.int32), indices))
  return ds.map(
      lambda p, y, i: {'encoded': tf.io.read_file(p), 'label': y, 'index': i},
      num_parallel_calls=_AUTOTUNE)


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
  if not len(train_paths):
    raise FileNotFoundError(f'no training files under {train_dir}')
  return _FolderSource(train_paths, train_labels, eval_paths, eval_labels,
                       class_names)


@dataclasses.dataclass(frozen=True)
class _TfdsSource:
  """A prepared TFDS image-classification dataset, read without decoding."""
  builder: Any
  shuffle_buffer: int

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

  def train_records(self, seed: int, epoch: int, start: int,
                    process_index: int, process_count: int) -> tf.data.Dataset:
    epoch_seed = int(np.random.default_rng([seed, epoch]).integers(2**31))
    ds = self._read(self._train_split(process_index, process_count),
                    seed=epoch_seed)
    return _with_index(ds, start)

  def _eval_subsplit(self, process_index: int, process_count: int) -> str:
    return tfds.even_splits(self._eval_split, process_count)[process_index]

  def eval_shard_size(self, process_index: int, process_count: int) -> int:
    split = self._eval_subsplit(process_index, process_count)
    return self.builder.info.splits[split].num_examples

  def eval_records(self, process_index: int,
                   process_count: int) -> tf.data.Dataset:
    ds = self._read(self._eval_subsplit(process_index, process_count),
                    seed=None)
    return _with_index(ds, 0)


def _with_index(ds: tf.data.Dataset, start: int) -> tf.data.Dataset:
  """TFDS examples as records, skipping `start` of them before decoding."""
  ds = ds.skip(start).enumerate(start)
  return ds.map(lambda i, ex: {'encoded': ex['image'],
                               'label': tf.cast(ex['label'], tf.int32),
                               'index': i})


def _tfds_data_dir(config) -> str:
  return (config.get('data_dir') or os.environ.get('TFDS_DATA_DIR') or
          os.path.expanduser('~/tensorflow_datasets'))


def _tfds_source(config) -> _TfdsSource:
  """The TFDS builder, prepared; a clear error if ImageNet's tars are absent."""
  data_dir = _tfds_data_dir(config)
  builder = tfds.builder(config.dataset, data_dir=data_dir)
  if not builder.is_prepared():
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
  return _TfdsSource(builder, config.input.shuffle_buffer)


def _source(config):
  dataset = config.dataset
  if dataset == 'synthetic':
    return _folder_source(synthetic.generate_from_config(config))
  if dataset.startswith('folder:'):
    return _folder_source(os.path.abspath(
        os.path.expanduser(dataset[len('folder:'):])))
  return _tfds_source(config)


def num_classes(config) -> int:
  """The number of classes of the configured dataset."""
  return _source(config).num_classes


def num_train_examples(config) -> int:
  """The number of training examples in the whole dataset (all processes)."""
  return _source(config).num_train


def class_names(config) -> tuple[str, ...]:
  """The configured dataset's class names, in label order."""
  source = _source(config)
  if isinstance(source, _FolderSource):
    return source.class_names
  return tuple(source.builder.info.features['label'].names)


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


def decode_resized(contents: tf.Tensor, resize_size: int,
                   antialias: bool = True) -> tf.Tensor:
  """The paper's base image: shorter side to resize_size, centre square.

  Returns float32 [resize_size, resize_size, 3] on the [0, 1] scale. The
  centre square is cut from the original before the bilinear resize (by
  default antialiased), which is the same image as resizing first, without
  the wasted work.
  """
  image = decode_rgb(contents)
  shape = tf.shape(image)
  top, left, side = _centre_square(shape[0], shape[1])
  image = tf.image.crop_to_bounding_box(image, top, left, side, side)
  image = tf.image.resize(image, [resize_size, resize_size],
                          method='bilinear', antialias=antialias)
  return tf.clip_by_value(image, 0.0, 255.0) / 255.0


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
      image = crop(decode_resized(record['encoded'], resize, inp.antialias),
                   offset, size)
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
    image = _to_uint8(decode_resized(record['encoded'], resize,
                                     config.input.antialias))
    image.set_shape([resize, resize, 3])
    return {'image': image, 'label': record['label'], 'index': record['index']}

  return preprocess


def _decodable_only(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Drops records whose bytes fail `is_decodable` (checked in parallel)."""
  ds = ds.map(lambda r: (is_decodable(r['encoded']), r),
              num_parallel_calls=_AUTOTUNE)
  return ds.filter(_is_valid).map(_record)


def _is_valid(valid: tf.Tensor, unused_record: dict) -> tf.Tensor:
  return valid


def _record(unused_valid: tf.Tensor, record: dict) -> dict:
  return record


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def train_records(config, *, epoch: int = 0) -> tf.data.Dataset:
  """Epoch `epoch`'s undecoded records {'encoded', 'label', 'index'}."""
  return _source(config).train_records(config.seed, epoch, 0, 0, 1)


def eval_records(config) -> tf.data.Dataset:
  """The whole validation set's undecoded records, in its stored order."""
  return _source(config).eval_records(0, 1)


def base_images(config, *, max_images: Optional[int] = None
                ) -> tf.data.Dataset:
  """Decodable training images at resize_size (float32, [0, 1]), for stats.

  In epoch 0's shuffled order, so that `max_images` takes a fair sample.
  """
  ds = train_records(config)
  if max_images is not None:
    ds = ds.take(max_images)
  ds = _decodable_only(ds)
  ds = ds.map(lambda r: decode_resized(r['encoded'], config.input.resize_size,
                                       config.input.antialias),
              num_parallel_calls=_AUTOTUNE)
  return ds.ignore_errors().with_options(_options())


# ---------------------------------------------------------------------------
# Iterators.


def _local_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f'batch size {batch_size} is not divisible by '
                     f'{process_count} processes.')
  return batch_size // process_count


class TrainIterator:
  """An infinite iterator of local training batches that can be resumed.

  `get_state()` is the position after the last batch returned; `set_state`
  restores it, so a resumed run sees exactly the batches an uninterrupted one
  would. `num_skipped` counts undecodable files consumed so far (part of the
  state). Batches may span epochs.
  """

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
    self.set_state({'epoch': 0, 'next_index': 0, 'num_skipped': 0})

  def get_state(self) -> dict[str, int]:
    return {'epoch': self._epoch, 'next_index': self._next_index,
            'num_skipped': self.num_skipped}

  def set_state(self, state: dict) -> None:
    self._epoch = int(state['epoch'])
    self._next_index = int(state['next_index'])
    self.num_skipped = int(state.get('num_skipped', 0))
    self._iterator = None
    self._iterator_epoch = self._epoch
    self._iterator_start = self._next_index
    self._iterator_examples = 0

  def __iter__(self) -> 'TrainIterator':
    return self

  def _epoch_dataset(self, epoch: int, start: int,
                     filler: int) -> tf.data.Dataset:
    """Epoch `epoch` from `start`, in batches, after `filler` dummy rows.

    The dummy rows make room in the first batch for the examples carried
    over from the previous epoch; the host replaces them.
    """
    seed = self._config.seed
    ds = self._source.train_records(seed, epoch, start, self._process_index,
                                    self._process_count)
    ds = _decodable_only(ds)
    ds = ds.map(make_train_preprocess(self._config, seed=seed,
                                      process_index=self._process_index,
                                      epoch=epoch),
                num_parallel_calls=_AUTOTUNE)
    ds = ds.ignore_errors()
    if filler:
      dummy = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype),
                                    ds.element_spec)
      ds = tf.data.Dataset.from_tensors(dummy).repeat(filler).concatenate(ds)
    ds = ds.batch(self._batch_size)
    return ds.prefetch(self._config.input.prefetch_batches).with_options(
        _options())

  def _next_part(self, wanted: int) -> Optional[dict]:
    """Up to `wanted` examples, or None at the end of an epoch."""
    filler = 0
    if self._iterator is None:
      filler = self._batch_size - wanted
      self._iterator = iter(self._epoch_dataset(
          self._iterator_epoch, self._iterator_start,
          filler).as_numpy_iterator())
    try:
      part = next(self._iterator)
    except StopIteration:
      if self._iterator_start == 0 and not self._iterator_examples:
        raise RuntimeError('no decodable training image in a whole epoch.')
      self._iterator = None
      self._iterator_epoch += 1
      self._iterator_start = 0
      self._iterator_examples = 0
      return None
    part = {k: v[filler:] for k, v in part.items()}
    self._iterator_examples += len(part['label'])
    return part

  def __next__(self) -> dict[str, np.ndarray]:
    parts, count = [], 0
    while count < self._batch_size:
      part = self._next_part(self._batch_size - count)
      if part is not None and len(part['label']):
        parts.append((self._iterator_epoch, part))
        count += len(part['label'])
    epoch, last = parts[-1]
    self._advance(epoch, int(last['index'][-1]) + 1)
    if len(parts) == 1:
      return {k: last[k] for k in device.TRAIN_KEYS}
    return {k: np.concatenate([p[k] for _, p in parts])
            for k in device.TRAIN_KEYS}

  def _advance(self, epoch: int, next_index: int) -> None:
    """Moves the state to (epoch, next_index) and counts skipped files."""
    consumed = ((epoch - self._epoch) * self._epoch_size + next_index -
                self._next_index)
    skipped = consumed - self._batch_size
    if skipped:
      self.num_skipped += skipped
      logging.warning('Skipped %d undecodable training files (%d in total).',
                      skipped, self.num_skipped)
    if next_index == self._epoch_size:
      epoch, next_index = epoch + 1, 0
    self._epoch, self._next_index = epoch, next_index


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
    ds = _decodable_only(ds)
    ds = ds.map(make_eval_preprocess(self._config),
                num_parallel_calls=_AUTOTUNE)
    ds = ds.ignore_errors().batch(self._batch_size)
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
      batch = next(batches, None)
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
