"""data_stats against NumPy's mean and covariance of the same pixels."""

import numpy as np
from PIL import Image

from alexnet_jax.tools import data_stats

from data_config import RESIZE
from data_config import small_data_config


def _folder(root, rng) -> np.ndarray:
  """A folder dataset of 6 PNGs at the base-image size (so the base images
  are the files themselves), with correlated colour channels; returns
  their pixels on the [0, 1] scale."""
  mix = np.array([[1.0, 0.6, 0.2], [0.0, 0.8, 0.5], [0.0, 0.0, 0.7]])
  images = []
  for i in range(6):
    noise = rng.uniform(0, 1, (RESIZE, RESIZE, 3)) @ mix
    pixels = np.clip(noise / mix.sum(0) * 255 + 10 * i, 0, 255).astype(
        np.uint8)
    for split in ('train', 'val'):
      folder = root / split / f'c{i % 2}'
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(pixels).save(folder / f'{i}.png')
    images.append(pixels)
  return np.stack(images) / 255.0


def test_stats_are_numpys_mean_and_covariance(tmp_path):
  pixels = _folder(tmp_path, np.random.default_rng(0))
  stats = data_stats.compute_stats(small_data_config(f'folder:{tmp_path}'))
  assert int(stats['num_images']) == 6
  np.testing.assert_allclose(stats['mean_image'], pixels.mean(0), atol=1e-6)
  np.testing.assert_allclose(stats['mean_rgb'], pixels.mean((0, 1, 2)),
                             atol=1e-6)
  covariance = np.cov(pixels.reshape(-1, 3), rowvar=False, bias=True)
  eigval = np.linalg.eigvalsh(covariance)[::-1]
  np.testing.assert_allclose(stats['eigval'], eigval, rtol=1e-4)
  # Eigenvectors: orthonormal columns that rebuild the covariance (their
  # signs are arbitrary).
  vectors = stats['eigvec'].astype(np.float64)
  np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-5)
  np.testing.assert_allclose(vectors @ np.diag(eigval) @ vectors.T,
                             covariance, atol=1e-6)
  assert eigval[0] > 2 * eigval[2]  # The channels really are correlated.
