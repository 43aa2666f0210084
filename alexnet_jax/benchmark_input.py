r"""Measures the training input pipeline's throughput on this machine.

  python -m alexnet_jax.benchmark_input --config=configs/default.py \
      --config.dataset=synthetic [--batches=N] [--imagenet_like=N]

`--imagenet_like=N` writes N ImageNet-sized JPEGs (500x375, ~110 KB) to a
temporary folder, benchmarks on it with decode_and_crop False and True, and
shows where the time goes: reading and checking the bytes, decoding, the
base image (decode + resize), the whole training transform. The last line
is `images_per_sec_per_core <number>` for the configured path.
"""

import io
import os
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image
import tensorflow as tf

from alexnet_jax import config_check
from alexnet_jax import input_pipeline

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.',
                                          lock_config=False)
_BATCHES = flags.DEFINE_integer('batches', 20, 'Batches to time.')
_WARMUP = flags.DEFINE_integer('warmup_batches', 3, 'Batches not timed.')
_IMAGENET_LIKE = flags.DEFINE_integer(
    'imagenet_like', 0, 'Benchmark on this many generated 500x375 JPEGs.')


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
  """Writes `count` JPEGs in the folder layout; returns their mean size."""
  rng = np.random.default_rng(0)
  sizes = []
  for split, n in (('train', count), ('val', num_classes)):
    for i in range(n):
      directory = os.path.join(root, split, f'class_{i % num_classes:03d}')
      os.makedirs(directory, exist_ok=True)
      data = _imagenet_like_jpeg(rng)
      sizes.append(len(data))
      with open(os.path.join(directory, f'{i:06d}.JPEG'), 'wb') as f:
        f.write(data)
  return float(np.mean(sizes))


def _cores() -> int:
  return len(os.sched_getaffinity(0))


def time_train_iterator(config, batches: int, warmup: int) -> float:
  """Images per second of the full training iterator (host batches)."""
  iterator = input_pipeline.create_train_iterator(config)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * config.batch_size / (time.perf_counter() - start)


def _touch(image: tf.Tensor) -> tf.Tensor:
  """A scalar that depends on every pixel, so no work is optimised away."""
  return tf.reduce_sum(tf.cast(image, tf.float32))


def _stage_rate(config, transform, count: int) -> float:
  """Images per second of `transform` on the raw records, in parallel."""
  records = input_pipeline.train_records(config).take(count)
  ds = records.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(32).prefetch(2)
  start = time.perf_counter()
  for _ in ds:
    pass
  return count / (time.perf_counter() - start)


def stage_rates(config, count: int) -> dict[str, float]:
  """Throughput of each cumulative stage of the training transform."""
  size = config.input.resize_size
  full = input_pipeline.make_train_preprocess(config, seed=0, process_index=0,
                                              epoch=0)
  stages = {
      'read + validity check': lambda r: tf.cast(
          input_pipeline.is_decodable(r['encoded']), tf.float32),
      'decode': lambda r: _touch(input_pipeline.decode_rgb(r['encoded'])),
      'decode + resize (base image)': lambda r: _touch(
          input_pipeline.decode_resized(r['encoded'], size)),
      'full training transform': lambda r: _touch(full(r)['image']),
  }
  return {name: _stage_rate(config, fn, count) for name, fn in stages.items()}


def _report(config, label: str) -> float:
  count = _BATCHES.value * config.batch_size
  for name, rate in stage_rates(config, count).items():
    print(f'  {label} stage {name:30s} {rate:8.1f} images/s')
  rate = time_train_iterator(config, _BATCHES.value, _WARMUP.value)
  print(f'{label}: {rate:.1f} images/s, {rate / _cores():.1f} images/s/core '
        f'({_cores()} cores, batch {config.batch_size}, '
        f'{input_pipeline.model_input_size(config)} px)')
  return rate


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  config = _CONFIG.value
  if not _IMAGENET_LIKE.value:
    rate = _report(config, f'{config.dataset}, decode_and_crop='
                   f'{config.input.decode_and_crop}')
  else:
    with tempfile.TemporaryDirectory() as root:
      size = write_imagenet_like(root, _IMAGENET_LIKE.value)
      print(f'{_IMAGENET_LIKE.value} ImageNet-like JPEGs, 500x375, mean '
            f'{size / 1e3:.0f} KB')
      config.dataset = f'folder:{root}'
      rates = {}
      for decode_and_crop in (False, True):
        path_config = config.copy_and_resolve_references()
        path_config.input.decode_and_crop = decode_and_crop
        rates[decode_and_crop] = _report(
            path_config, f'imagenet_like, decode_and_crop={decode_and_crop}')
      rate = rates[config.input.decode_and_crop]
  print(f'images_per_sec_per_core {rate / _cores():.1f}')


if __name__ == '__main__':
  app.run(main, flags_parser=config_check.parse_flags)
