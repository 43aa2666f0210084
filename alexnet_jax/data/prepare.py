"""Stores a dataset's base images once, as JPEGs in a few large shard files.

The command line is `python -m alexnet_jax.tools.prepare`
(alexnet_jax/tools/prepare.py).
Reads the configured dataset (`imagenet2012` from TFDS, `folder:ROOT`,
`synthetic`), makes every image's base image with the training pipeline's
own function (`decode.base_image`: shorter side to resize_size,
centre square) and writes it as a JPEG into TFRecord shards,
`DIR/{train,val}-SSSSS-of-NNNNN.tfrecord`, about `examples_per_shard`
images each. Records are tf.train.Examples with 'image' (JPEG bytes),
'label', 'key' (the example's position in the source listing) and 'name'.
`DIR/index.json` holds per split the shard files and their counts, the
class names, the undecodable files (listed, not stored), the settings and
the PSNR of the stored images against the float base images. Train with
`--config.dataset=prepared:DIR`.

A shard is the unit of work and of resumption: it is written under a
temporary name, renamed, then marked done by a small `.json` beside it, so
a run that is killed and started again redoes only unfinished shards. One
shard per task, `--workers` processes (default: every core). On several
hosts, run the same command on each with --process_index=i
--process_count=P (DIR shared): host i writes shards i, i + P, ...; whoever
finishes last writes the index (running the command again writes it too).

Training example j of a folder goes to shard j mod N, so every shard holds
every class; TFDS shards take contiguous ranges of TFDS's already shuffled
order.

Each shard's marker, and index.json, record its size and the CRC-32 of its
records, computed as they are written. `--verify` (`verify`) reads every
shard of a host and checks them, and rewrites from the source exactly the
damaged or missing ones, as a resumed run would write them.

`--measure_quality=75,85,90,95` measures PSNR and size at those qualities
on `--sample` training images and writes nothing.
"""

import dataclasses
import json
import math
import multiprocessing
import os
import time
from typing import Any, Optional
import uuid
import zlib

import numpy as np

from alexnet_jax import logs
from alexnet_jax import storage
from alexnet_jax.data import decode
from alexnet_jax.data import iterators
from alexnet_jax.data import sources

FORMAT = 'alexnet_jax.prepared/1'
SPLITS = ('train', 'val')
_MAX_PSNR = 99.0  # dB, for an image stored without error.
# What index.json lists of each shard: `--verify` checks the last three.
_SHARD_FIELDS = ('file', 'count', 'bytes', 'records_crc32')


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a preparation depends on; a resumed run must match them."""
  dataset: str
  resize_size: int
  antialias: bool
  quality: int
  num_shards: dict[str, int]
  num_listed: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Task:
  """One shard to write: its examples and where they come from."""
  out: str
  split: str
  shard: int
  settings: Settings
  keys: np.ndarray              # Positions in the source listing.
  labels: np.ndarray
  names: tuple[str, ...]
  paths: Optional[tuple[str, ...]] = None  # Folder sources.
  tfds: Optional[tuple[str, Optional[str], str]] = None  # (name, dir, split)


def shard_name(split: str, shard: int, num_shards: int) -> str:
  return f'{split}-{shard:05d}-of-{num_shards:05d}.tfrecord'


def _done_marker(path: str) -> str:
  return path + '.json'


# ---------------------------------------------------------------------------
# Listing the source (main process).


@dataclasses.dataclass(frozen=True)
class _Listing:
  class_names: tuple[str, ...]
  labels: dict[str, np.ndarray]
  names: dict[str, tuple[str, ...]]
  paths: Optional[dict[str, tuple[str, ...]]] = None
  tfds: Optional[tuple[str, Optional[str], dict[str, str]]] = None


def _list_source(config) -> _Listing:
  """Every example of each split, in the source's own order."""
  if sources.is_tfds(config):
    sources.prepare_tfds(config)
    builder = sources.tfds_builder(config)
    splits = {'train': 'train', 'val': 'validation' if 'validation' in
              builder.info.splits else 'test'}
    labels, names = {}, {}
    for split, tfds_split in splits.items():
      count = builder.info.splits[tfds_split].num_examples
      labels[split] = np.zeros(count, np.int32)  # Read by the workers.
      names[split] = tuple(f'{tfds_split}[{j}]' for j in range(count))
    return _Listing(tuple(builder.info.features['label'].names), labels,
                    names, tfds=(config.dataset, config.get('data_dir'),
                                 splits))
  if config.dataset.startswith('prepared:'):
    raise ValueError('--config.dataset is already prepared')
  source = sources.from_config(config)
  root = storage.dirname(storage.dirname(storage.dirname(
      str(source.train_paths[0]))))  # ROOT of ROOT/train/<class>/<file>.
  paths = {'train': tuple(source.train_paths), 'val': tuple(source.eval_paths)}
  return _Listing(
      source.class_names,
      {'train': source.train_labels, 'val': source.eval_labels},
      {s: tuple(p[len(root) + 1:] for p in paths[s]) for s in SPLITS},
      paths=paths)


def _shard_examples(listing: _Listing, split: str, shard: int,
                    num_shards: int) -> np.ndarray:
  """Listing positions of a shard's examples."""
  count = len(listing.names[split])
  if listing.tfds:  # TFDS's order is already shuffled: contiguous ranges.
    return np.arange(count * shard // num_shards,
                     count * (shard + 1) // num_shards)
  return np.arange(shard, count, num_shards)  # Every class in every shard.


def _task(listing: _Listing, out: str, settings: Settings, split: str,
          shard: int) -> Task:
  keys = _shard_examples(listing, split, shard, settings.num_shards[split])
  names = tuple(listing.names[split][k] for k in keys)
  if listing.tfds:
    name, data_dir, splits = listing.tfds
    tfds_split = f'{splits[split]}[{keys[0]}:{keys[-1] + 1}]' if len(
        keys) else f'{splits[split]}[0:0]'
    return Task(out, split, shard, settings, keys,
                listing.labels[split][keys], names,
                tfds=(name, data_dir, tfds_split))
  return Task(out, split, shard, settings, keys, listing.labels[split][keys],
              names, paths=tuple(listing.paths[split][k] for k in keys))


# ---------------------------------------------------------------------------
# Writing one shard (worker processes).


def _init_worker() -> None:
  """One thread per worker process: the processes use the cores; and no
  GPU, as in the tool that starts them (`cli.hide_gpus_from_tensorflow`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)


@decode.graph_only
def _records(task: Task):
  """The task's undecoded records {'encoded', 'label', 'key'}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if task.paths is not None:
    ds = tf.data.Dataset.from_tensor_slices(
        (list(task.paths), task.labels.astype(np.int64),
         task.keys.astype(np.int64)))
    return ds.map(lambda p, y, k: {'encoded': tf.io.read_file(p),
                                   'label': y, 'key': k})
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, data_dir, split = task.tfds
  ds = tfds.load(name, data_dir=data_dir, split=split, shuffle_files=False,
                 decoders={'image': tfds.decode.SkipDecoding()})
  first = int(task.keys[0]) if len(task.keys) else 0
  return ds.enumerate(first).map(
      lambda k, ex: {'encoded': ex['image'], 'label': ex['label'], 'key': k})


@decode.graph_only
def stored_images(records, resize_size: int, antialias: bool, quality: int):
  """Records -> {'jpeg', 'label', 'key', 'sse'}: the base image as a JPEG
  and its squared error against the float base image; undecodable records
  are dropped."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def store(record):
    base = decode.base_image_float(record['encoded'], resize_size, antialias)
    jpeg = tf.io.encode_jpeg(decode.to_uint8(base), quality=quality)
    back = tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)
    return {'jpeg': jpeg, 'label': record['label'], 'key': record['key'],
            'sse': tf.reduce_sum(tf.square(back - base))}

  checked = iterators.decodable_only(records)
  return iterators.map_dropping_undecodable(checked, store)


def psnr(sse: np.ndarray, pixels: int) -> np.ndarray:
  """PSNR in dB of images with these squared errors (0..255 scale)."""
  mse = np.maximum(np.asarray(sse, np.float64) / pixels, 1e-30)
  return np.minimum(10 * np.log10(255.0**2 / mse), _MAX_PSNR)


def _example(jpeg: bytes, label: int, key: int, name: str) -> bytes:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  feature = lambda **kw: tf.train.Feature(**kw)
  return tf.train.Example(features=tf.train.Features(feature={
      'image': feature(bytes_list=tf.train.BytesList(value=[jpeg])),
      'label': feature(int64_list=tf.train.Int64List(value=[label])),
      'key': feature(int64_list=tf.train.Int64List(value=[key])),
      'name': feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
  })).SerializeToString()


def write_shard(task: Task) -> dict[str, Any]:
  """Writes one shard and its done-marker; returns the marker's content."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  settings = task.settings
  started = time.perf_counter()
  path = storage.join(task.out, shard_name(
      task.split, task.shard, settings.num_shards[task.split]))
  for stale in storage.glob(f'{path}.tmp-*'):  # From a killed run.
    storage.remove(stale)
  # An object in a bucket appears whole when its upload ends; a local file
  # is written under another name and renamed.
  temporary = (path if storage.is_bucket(path)
               else f'{path}.tmp-{uuid.uuid4().hex}')
  ds = stored_images(_records(task), settings.resize_size, settings.antialias,
                     settings.quality)
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  name_of = dict(zip(task.keys.tolist(), task.names))
  written, sse, crc = [], [], 0
  try:
    with tf.io.TFRecordWriter(temporary) as writer:
      for r in ds.with_options(options).as_numpy_iterator():
        key = int(r['key'])
        record = _example(r['jpeg'], int(r['label']), key, name_of[key])
        writer.write(record)
        crc = zlib.crc32(record, crc)
        written.append(key)
        sse.append(float(r['sse']))
    if temporary != path:
      storage.rename(temporary, path)
  except tf.errors.OpError as error:
    if temporary != path and storage.exists(temporary):
      storage.remove(temporary)
    raise OSError(f'{path}: {error.message.splitlines()[0]}') from None
  size = settings.resize_size
  values = psnr(np.array(sse), size * size * 3)
  done = {'file': storage.basename(path), 'count': len(written),
          'undecodable': sorted(set(task.names) -
                                {name_of[k] for k in written}),
          'sse': float(np.sum(sse)), 'psnr_sum': float(values.sum()),
          'psnr_min': float(values.min()) if len(values) else None,
          'bytes': storage.size(path), 'records_crc32': crc,
          'seconds': time.perf_counter() - started}
  _write_json(_done_marker(path), done)
  return dict(done, split=task.split, listed=len(task.keys))


def _write_json(path: str, content: dict) -> None:
  storage.write_text(path, json.dumps(content, indent=1))


def _read_json(path: str) -> Optional[dict]:
  if not storage.exists(path):
    return None
  return storage.read_json(path)


# ---------------------------------------------------------------------------
# The whole preparation (main process).


def _format_duration(seconds: float) -> str:
  return logs.format_duration(seconds)


class _Progress:
  """A progress line: shards, images, images/s, ETA."""

  def __init__(self, tasks: list[Task]):
    self._total_shards = len(tasks)
    self._total_images = sum(len(t.keys) for t in tasks)
    self._shards = self._images = 0
    self._start = self._shown = time.perf_counter()

  def update(self, listed: int) -> None:
    self._shards += 1
    self._images += listed
    now = time.perf_counter()
    if now - self._shown < 5 and self._shards < self._total_shards:
      return
    self._shown = now
    rate = self._images / max(now - self._start, 1e-9)
    eta = (self._total_images - self._images) / max(rate, 1e-9)
    print(f'prepare: {self._shards}/{self._total_shards} shards, '
          f'{self._images}/{self._total_images} images, {rate:.0f} images/s, '
          f'ETA {_format_duration(eta)}', flush=True)


def _check_settings(out: str, settings: Settings) -> None:
  """Records the settings in DIR/prepare.json; stops if they differ."""
  storage.makedirs(out)
  path = storage.join(out, 'prepare.json')
  wanted = dataclasses.asdict(settings)
  existing = _read_json(path)
  if existing is None:
    _write_json(path, wanted)
  elif existing != json.loads(json.dumps(wanted)):
    changed = sorted(k for k in wanted if existing.get(k) != json.loads(
        json.dumps(wanted[k])))
    raise ValueError(f'--out={out} holds a preparation with other settings '
                     f'({", ".join(changed)}); use another directory or '
                     'delete it')


def _write_index(out: str, settings: Settings,
                 listing: _Listing) -> Optional[dict]:
  """DIR/index.json, when every shard of every split is done."""
  splits = {}
  for split in SPLITS:
    num_shards = settings.num_shards[split]
    done = [_read_json(_done_marker(storage.join(
        out, shard_name(split, s, num_shards)))) for s in range(num_shards)]
    if any(d is None for d in done):
      return None
    count = sum(d['count'] for d in done)
    pixels = count * settings.resize_size**2 * 3
    splits[split] = {
        'shards': [{k: d[k] for k in _SHARD_FIELDS if k in d} for d in done],
        'num_examples': count,
        'num_listed': settings.num_listed[split],
        'undecodable': sorted(n for d in done for n in d['undecodable']),
        'bytes': sum(d['bytes'] for d in done),
        'psnr_db': float(psnr(sum(d['sse'] for d in done), pixels))
                   if count else None,
        'psnr_mean_db': sum(d['psnr_sum'] for d in done) / max(count, 1),
        'psnr_min_db': min((d['psnr_min'] for d in done
                            if d['psnr_min'] is not None), default=None),
    }
  index = {'format': FORMAT, 'dataset': settings.dataset,
           'resize_size': settings.resize_size,
           'antialias': settings.antialias, 'quality': settings.quality,
           'class_names': list(listing.class_names), 'splits': splits}
  _write_json(storage.join(out, sources.PREPARED_INDEX), index)
  return index


def prepare(config, out: str, *, quality: int = 90,
            examples_per_shard: int = 1024, workers: Optional[int] = None,
            process_index: int = 0, process_count: int = 1) -> Optional[dict]:
  """Writes this host's missing shards, then the index if all are there.

  Returns the index, or None while other hosts' shards are missing.
  """
  listing = _list_source(config)
  num_listed = {s: len(listing.names[s]) for s in SPLITS}
  settings = Settings(
      config.dataset, config.input.resize_size, config.input.antialias,
      quality, {s: max(1, math.ceil(n / examples_per_shard))
                for s, n in num_listed.items()}, num_listed)
  _check_settings(out, settings)
  tasks = []
  for split in ('val', 'train'):
    num_shards = settings.num_shards[split]
    for shard in range(process_index, num_shards, process_count):
      path = storage.join(out, shard_name(split, shard, num_shards))
      if _read_json(_done_marker(path)) is None:
        tasks.append(_task(listing, out, settings, split, shard))
  mine = sum(len(range(process_index, num_shards, process_count))
             for num_shards in settings.num_shards.values())
  print(f'prepare: {config.dataset} -> {out}: {num_listed["train"]} train '
        f'and {num_listed["val"]} val images; {len(tasks)} shards to write '
        f'here ({mine - len(tasks)} done)', flush=True)
  _write_shards(tasks, workers)
  index = _write_index(out, settings, listing)
  if index is None:
    print('prepare: shards of other hosts are missing; the last host to '
          'finish writes index.json (or run this again when all are done)')
  return index


def _write_shards(tasks: list[Task], workers: Optional[int]) -> None:
  """Writes the tasks' shards, `workers` processes (default: every core)."""
  workers = workers or len(os.sched_getaffinity(0))
  progress = _Progress(tasks)
  if workers == 1 or len(tasks) <= 1:
    for task in tasks:
      progress.update(write_shard(task)['listed'])
  elif tasks:
    context = multiprocessing.get_context('spawn')
    with context.Pool(min(workers, len(tasks)), _init_worker) as pool:
      for done in pool.imap_unordered(write_shard, tasks):
        progress.update(done['listed'])


# ---------------------------------------------------------------------------
# Checking and repairing a prepared directory.


@dataclasses.dataclass(frozen=True)
class Verification:
  """What `verify` found: the damaged or missing shards, and which of them
  it rewrote."""
  damaged: list[str]
  rewritten: list[str]


def _recorded_settings(out: str, config) -> Settings:
  """The settings DIR/prepare.json records, which `config` must match."""
  recorded = _read_json(storage.join(out, 'prepare.json'))
  if recorded is None:
    raise FileNotFoundError(f'{out}/prepare.json not found: --out is not a '
                            'directory written by alexnet_jax.tools.prepare')
  try:
    settings = Settings(**recorded)
  except TypeError:
    raise ValueError(f'{out}/prepare.json does not hold the settings of a '
                     'preparation') from None
  wanted = {'dataset': config.dataset,
            'resize_size': config.input.resize_size,
            'antialias': config.input.antialias}
  changed = sorted(k for k, v in wanted.items()
                   if getattr(settings, k) != v)
  if changed:
    raise ValueError(f'--config differs from the preparation in {out} '
                     f'({", ".join(changed)}); give the config that '
                     'prepared it')
  return settings


def _repair_listing(config, settings: Settings) -> tuple[Optional[_Listing],
                                                         str]:
  """The source listing to rewrite shards from, or None and why not."""
  if sources.is_tfds(config) and not sources.tfds_builder(
      config).is_prepared():
    return None, f'{config.dataset} is not prepared in TFDS here'
  try:
    listing = _list_source(config)
  except (OSError, ValueError) as error:
    return None, str(error)
  listed = {s: len(listing.names[s]) for s in SPLITS}
  if listed != settings.num_listed:
    return None, (f'the source lists {listed} images, the preparation '
                  f'{settings.num_listed}: it changed since')
  return listing, ''


def verify(config, out: str, *, workers: Optional[int] = None,
           process_index: int = 0, process_count: int = 1) -> Verification:
  """Checks this host's shards of DIR and rewrites the damaged ones.

  Reads every shard of this host (shards i, i + P, ... of each split, as
  `prepare` writes them) through `sources.shard_damage`: size, every
  record's CRC-32C, count and records' CRC-32 against index.json. Prints a
  line per damaged or missing shard. Where `config`'s source is available
  and lists what it listed when prepared, rewrites exactly those shards
  as `prepare` wrote them, and index.json once every shard is done;
  otherwise only reports. Quality and shard counts come from
  DIR/prepare.json.
  """
  settings = _recorded_settings(out, config)
  index = sources.read_prepared_index(out)
  damaged, shards = [], []
  for split in SPLITS:
    entries = index['splits'][split]['shards']
    for shard in range(process_index, len(entries), process_count):
      entry = entries[shard]
      path = storage.join(out, entry['file'])
      reason = sources.shard_damage(path, entry['count'], entry.get('bytes'),
                                    entry.get('records_crc32'))
      if reason:
        print(f'damaged {path}: {reason}', flush=True)
        damaged.append(path)
        shards.append((split, shard))
  if not damaged:
    return Verification([], [])
  listing, why_not = _repair_listing(config, settings)
  if listing is None:
    print(f'verify: not rewriting: {why_not}')
    return Verification(damaged, [])
  _write_shards([_task(listing, out, settings, split, shard)
                 for split, shard in shards], workers)
  for path in damaged:
    print(f'rewrote {path}')
  _write_index(out, settings, listing)
  return Verification(damaged, damaged)


def summary(index: dict) -> str:
  """What the index says, in a few lines."""
  lines = [f'quality {index["quality"]}, {index["resize_size"]}x'
           f'{index["resize_size"]} base images']
  for split, info in index['splits'].items():
    lines.append(
        f'{split}: {info["num_examples"]} images in {len(info["shards"])} '
        f'shards, {info["bytes"] / 1e6:.1f} MB, {len(info["undecodable"])} '
        f'undecodable, PSNR {info["psnr_db"]:.2f} dB over all pixels '
        f'(per image: mean {info["psnr_mean_db"]:.2f}, min '
        f'{info["psnr_min_db"]:.2f})')
  return '\n'.join(lines)


def measure_quality(config, qualities: list[int], sample: int
                    ) -> list[dict[str, float]]:
  """PSNR and size of the stored base images at each quality, on `sample`
  training images spread over the listing."""
  listing = _list_source(config)
  count = len(listing.names['train'])
  keys = np.linspace(0, count - 1, min(sample, count)).astype(np.int64)
  settings = Settings(config.dataset, config.input.resize_size,
                      config.input.antialias, 0, {}, {})
  if listing.tfds:
    raise ValueError('--measure_quality needs a folder dataset')
  task = Task('', 'train', 0, settings, keys, listing.labels['train'][keys],
              (), paths=tuple(listing.paths['train'][k] for k in keys))
  rows = []
  pixels = config.input.resize_size**2 * 3
  for quality in qualities:
    ds = stored_images(_records(task), settings.resize_size,
                       settings.antialias, quality)
    sse, size = [], []
    for r in ds.as_numpy_iterator():
      sse.append(float(r['sse']))
      size.append(len(r['jpeg']))
    values = psnr(np.array(sse), pixels)
    rows.append({'quality': quality,
                 'psnr_db': float(psnr(np.sum(sse), pixels * len(sse))),
                 'psnr_mean_db': float(values.mean()),
                 'psnr_min_db': float(values.min()),
                 'kb': float(np.mean(size)) / 1e3})
  return rows
