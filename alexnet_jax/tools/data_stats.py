r"""Computes the training set's RGB mean, mean image and colour PCA.

  python -m alexnet_jax.tools.data_stats --config=configs/two_tower.py \
      --config.dataset=synthetic [--max_images=N] [--out=stats.npz]

The .npz holds `mean_rgb` [3], `mean_image` [R, R, 3] (R = resize_size),
`eigval` [3] (descending) and `eigvec` [3, 3] (columns), all on the [0, 1]
pixel scale of the pipeline's base images (shorter side to R, centre crop).
Point `config.input.stats_file` at it to use these instead of the ImageNet
constants.
"""

import os
import re
from typing import Optional

from absl import app
from absl import flags
import numpy as np
import tqdm

from alexnet_jax import cli
from alexnet_jax.data import iterators
from alexnet_jax.data import sources

_BATCH = 64


def compute_stats(config, max_images: Optional[int] = None
                  ) -> dict[str, np.ndarray]:
  """Mean image, mean RGB and RGB covariance eigen-decomposition."""
  total = sources.num_train_examples(config)
  if max_images is not None:
    total = min(total, max_images)
  size = config.input.resize_size
  image_sum = np.zeros((size, size, 3), np.float64)
  outer_sum = np.zeros((3, 3), np.float64)
  num_images = 0
  batches = iterators.base_images(config, max_images=max_images).batch(
      _BATCH).prefetch(2).as_numpy_iterator()
  with tqdm.tqdm(total=total, unit='img') as progress:
    for batch in batches:
      image_sum += batch.sum(0, dtype=np.float64)
      pixels = batch.reshape(-1, 3).astype(np.float64)
      outer_sum += pixels.T @ pixels
      num_images += len(batch)
      progress.update(len(batch))
  if not num_images:
    raise ValueError('no decodable training image.')
  mean_image = image_sum / num_images
  mean_rgb = mean_image.mean((0, 1))
  covariance = outer_sum / (num_images * size * size) - np.outer(mean_rgb,
                                                                 mean_rgb)
  eigval, eigvec = np.linalg.eigh(covariance)
  order = np.argsort(eigval)[::-1]
  return dict(mean_rgb=mean_rgb.astype(np.float32),
              mean_image=mean_image.astype(np.float32),
              eigval=eigval[order].astype(np.float32),
              eigvec=eigvec[:, order].astype(np.float32),
              num_images=np.int64(num_images),
              resize_size=np.int64(size))


def default_path(config) -> str:
  name = re.sub(r'[^A-Za-z0-9_.-]+', '_', config.dataset).strip('_')
  return os.path.abspath(f'stats_{name}_r{config.input.resize_size}.npz')


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.data_stats`."""
  return {
      'config': cli.config_flag(),
      'max_images': flags.DEFINE_integer(
          'max_images', None, 'Use at most this many training images.'),
      'out': flags.DEFINE_string(
          'out', None, 'Output .npz (default: printed).'),
  }


def main(argv: list[str], flag: cli.Flags) -> None:
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  config = flag['config'].value
  stats = compute_stats(config, flag['max_images'].value)
  out = flag['out'].value or default_path(config)
  np.savez(out, **stats)
  print(f'images: {int(stats["num_images"])}')
  for key in ('mean_rgb', 'eigval', 'eigvec'):
    print(f'{key}: {np.round(stats[key].astype(float), 5).tolist()}')
  print(f'wrote {out}  (use --config.input.stats_file={out})')


if __name__ == '__main__':
  cli.run(main, define_flags)
