r"""Measures the training input pipeline's throughput on this machine.

  python -m alexnet_jax.tools.benchmark_input --config=configs/two_tower.py \
      --config.dataset=SOURCE [--batches=N] [--stages]
  python -m alexnet_jax.tools.benchmark_input --config=configs/two_tower.py \
      --imagenet_like=2000 [--prepare] [--data_dir=DIR]

Times the training iterator: host batches ready for the device (uint8
crops, lighting offsets, crop positions, labels), epoch boundaries included
(the slowest batch is printed beside the median). The last line is
`images_per_sec_per_core <number>`: wall-clock images/s over the cores this
process may use; on a shared machine compare it with the load average
printed, and with the images per CPU-second of this process.

`--imagenet_like=N` writes N ImageNet-sized JPEGs (500x375, ~110 KB) in the
folder layout (into --data_dir, reused if it already holds them, else a
temporary folder) and reads them raw, or with `--prepare` from a prepared
copy of them (`alexnet_jax.tools.prepare`, written beside them or into
`--prepared_dir`, which may be a bucket). `--stages` shows where the time
goes: reading (and checking) the bytes, decoding, the base
image, the whole training transform. `--resume` times the first batch after
restoring the worst position of an epoch against the first of a fresh start.
"""

import io
import os
import resource
import statistics
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import tensorflow as tf

from alexnet_jax import cli
from alexnet_jax import storage
from alexnet_jax.data import augment
from alexnet_jax.data import decode
from alexnet_jax.data import iterators
from alexnet_jax.data import prepare as data_prepare
from alexnet_jax.data import sources


def _imagenet_like_jpeg(rng: np.random.Generator) -> bytes:
  """A photo-like 500x375 JPEG: smooth colour field plus grain, ~110 KB."""
  coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
  pixels = np.asarray(Image.fromarray(coarse).resize((500, 375),
                                                     Image.BICUBIC),
                      np.float32)
  pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 20
  buffer = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
      buffer, 'JPEG', quality=90)
  return buffer.getvalue()


def write_imagenet_like(root: str, count: int, num_classes: int = 10) -> float:
  """Writes `count` JPEGs in the folder layout; returns their mean size.

  Files already there (from an earlier run) are kept.
  """
  sizes = []
  for split_id, (split, n) in enumerate((('train', count),
                                         ('val', num_classes))):
    for i in range(n):
      directory = os.path.join(root, split, f'class_{i % num_classes:03d}')
      path = os.path.join(directory, f'{i:06d}.JPEG')
      if not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        with open(path, 'wb') as f:
          f.write(_imagenet_like_jpeg(np.random.default_rng([split_id, i])))
      sizes.append(os.path.getsize(path))
  return float(np.mean(sizes))


def _cores() -> int:
  return len(os.sched_getaffinity(0))


def _load() -> str:
  with open('/proc/loadavg') as f:
    return ' '.join(f.read().split()[:3])


def _cpu_seconds() -> float:
  """CPU time of this process, all threads (not of other jobs)."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def time_train_iterator(config, batches: int, warmup: int
                        ) -> dict[str, float]:
  """Images per second (wall clock) and per CPU-second of the training
  iterator, and its median and slowest batch times."""
  iterator = iterators.create_train_iterator(config)
  for _ in range(warmup):
    next(iterator)
  times = []
  start, cpu_start = time.perf_counter(), _cpu_seconds()
  for _ in range(batches):
    before = time.perf_counter()
    next(iterator)
    times.append(time.perf_counter() - before)
  images = batches * config.batch_size
  return {'rate': images / (time.perf_counter() - start),
          'per_cpu_second': images / (_cpu_seconds() - cpu_start),
          'median': statistics.median(times), 'slowest': max(times)}


def time_resume(config) -> tuple[float, float]:
  """Seconds to the first batch from a fresh start and from the worst
  position: just before the end of the epoch's last window."""
  def first_batch(state):
    start = time.perf_counter()
    iterator = iterators.create_train_iterator(config)
    iterator.set_state(state)
    next(iterator)
    return time.perf_counter() - start

  size = sources.num_train_examples(config)
  worst = max(0, size - config.batch_size - 1)
  first_batch({'epoch': 0, 'next_index': 0})  # Warm TF's caches.
  return (first_batch({'epoch': 0, 'next_index': 0}),
          first_batch({'epoch': 0, 'next_index': worst}))


def _touch(image: tf.Tensor) -> tf.Tensor:
  """A scalar that depends on every pixel, so no work is optimised away."""
  return tf.reduce_sum(tf.cast(image, tf.float32))


@decode.graph_only
def _stage_rate(config, transform, count: int) -> float:
  """Images per second of `transform` on the raw records, in parallel."""
  records = iterators.train_records(config).take(count)
  ds = records.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(32).prefetch(2)
  start = time.perf_counter()
  for _ in ds:
    pass
  return count / (time.perf_counter() - start)


def stage_rates(config, count: int) -> dict[str, float]:
  """Throughput of each cumulative stage of the training transform."""
  size = config.input.resize_size
  full = augment.make_train_preprocess(config, seed=0, epoch=0)
  stages = {
      'read': lambda r: tf.strings.length(r['encoded']),
      'read + validity check': lambda r: tf.cast(
          decode.is_decodable(r['encoded']), tf.float32),
      'decode': lambda r: _touch(decode.decode_rgb(r['encoded'])),
      'base image (uint8)': lambda r: _touch(
          decode.base_image(r['encoded'], size,
                                    config.input.antialias)),
      'full training transform': lambda r: _touch(full(r)['image']),
  }
  return {name: _stage_rate(config, fn, count) for name, fn in stages.items()}


def _report(config, flag: cli.Flags) -> float:
  if flag['stages'].value:
    count = min(flag['batches'].value * config.batch_size,
                sources.num_train_examples(config))
    for name, rate in stage_rates(config, count).items():
      print(f'  stage {name:26s} {rate:8.1f} images/s')
  if flag['resume'].value:
    fresh, worst = time_resume(config)
    print(f'first batch: {fresh:.2f} s from the start, {worst:.2f} s from the '
          'worst resume position')
  timing = time_train_iterator(config, flag['batches'].value,
                               flag['warmup_batches'].value)
  rate = timing['rate']
  print(f'{config.dataset}: {rate:.1f} images/s, {rate / _cores():.1f} per '
        f'core ({_cores()} cores, batch {config.batch_size}, '
        f'{augment.model_input_size(config)} px); batch time median '
        f'{timing["median"] * 1e3:.0f} ms, slowest '
        f'{timing["slowest"] * 1e3:.0f} ms; load average {_load()}')
  print(f'images per CPU-second of this process: '
        f'{timing["per_cpu_second"]:.1f} (other jobs lower it less)')
  return rate


def _imagenet_like_dataset(config, root: str, flag: cli.Flags) -> str:
  count = flag['imagenet_like'].value
  size = write_imagenet_like(os.path.join(root, 'raw'), count)
  print(f'{count} ImageNet-like JPEGs, 500x375, mean '
        f'{size / 1e3:.0f} KB, in {root}/raw')
  raw = f'folder:{os.path.join(root, "raw")}'
  if not flag['prepare'].value:
    return raw
  prepared = storage.check_location(
      flag['prepared_dir'].value or os.path.join(root, 'prepared'),
      '--prepared_dir')
  prepare_config = config.copy_and_resolve_references()
  prepare_config.dataset = raw
  data_prepare.prepare(prepare_config, prepared)
  return f'prepared:{prepared}'


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.benchmark_input`."""
  return {
      'config': cli.config_flag(lock_config=False),
      'batches': flags.DEFINE_integer('batches', 40, 'Batches to time.'),
      'warmup_batches': flags.DEFINE_integer(
          'warmup_batches', 5, 'Batches not timed.'),
      'imagenet_like': flags.DEFINE_integer(
          'imagenet_like', 0,
          'Benchmark on this many generated 500x375 JPEGs.'),
      'data_dir': flags.DEFINE_string(
          'data_dir', None,
          'Where --imagenet_like writes (and reuses) its files.'),
      'prepare': flags.DEFINE_bool(
          'prepare', False, 'With --imagenet_like: read a prepared copy.'),
      'prepared_dir': flags.DEFINE_string(
          'prepared_dir', None, 'With --prepare: where the prepared copy '
          'goes (a path or gs://BUCKET/PATH; default: beside the JPEGs).'),
      'stages': flags.DEFINE_bool('stages', False, 'Time each stage too.'),
      'resume': flags.DEFINE_bool(
          'resume', False, 'Time resuming at the worst position.'),
  }


def main(argv: list[str], flag: cli.Flags) -> None:
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  config = flag['config'].value
  if not flag['imagenet_like'].value:
    rate = _report(config, flag)
  elif flag['data_dir'].value:
    config.dataset = _imagenet_like_dataset(config, flag['data_dir'].value,
                                            flag)
    rate = _report(config, flag)
  else:
    with tempfile.TemporaryDirectory() as root:
      config.dataset = _imagenet_like_dataset(config, root, flag)
      rate = _report(config, flag)
  print(f'images_per_sec_per_core {rate / _cores():.1f}')


if __name__ == '__main__':
  cli.run(main, define_flags)
