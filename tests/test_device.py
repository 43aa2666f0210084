"""The device's share of the input: normalisation and the evaluation crops."""

import jax
import numpy as np
import pytest

from alexnet_jax import defaults
from alexnet_jax.data import device

RESIZE, CROP = 40, 32


def _windows(images):
  """The paper's ten crops of [B, R, R, 3] images, in NumPy."""
  far, mid = RESIZE - CROP, (RESIZE - CROP) // 2
  corners = [images[:, y:y + CROP, x:x + CROP]
             for y, x in ((0, 0), (0, far), (far, 0), (far, far), (mid, mid))]
  return corners + [w[:, :, ::-1] for w in corners]


def test_ten_crops_are_corners_centre_and_their_mirrors():
  images = np.random.default_rng(0).random((2, RESIZE, RESIZE, 3), np.float32)
  views = device.ten_crop_views(RESIZE, CROP)
  crops = jax.jit(lambda x: jax.lax.map(
      lambda view: device.crop_view(x, view, CROP), views))(images)
  assert crops.shape == (10, 2, CROP, CROP, 3)
  for got, want in zip(crops, _windows(images)):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(crops[device.CENTRE_VIEW],
                                device.centre_crop(images, CROP))


@pytest.mark.parametrize('per_pixel,std,scale,bgr', [
    (False, None, 1.0, False), (True, (0.2, 0.25, 0.3), 1.0, False),
    (False, None, 255.0, True)])
def test_eval_base_images_are_normalised_like_numpy(per_pixel, std, scale,
                                                    bgr):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (3, RESIZE, RESIZE, 3), np.uint8)
  mean = rng.random((RESIZE, RESIZE, 3) if per_pixel else (3,)).astype(
      np.float32)
  norm = device.Normalization(
      mean, None if std is None else np.array(std, np.float32), scale, bgr)
  want = (images / 255.0 - mean) / (1.0 if std is None else np.array(std))
  want *= scale
  want = want[..., ::-1] if bgr else want
  got = jax.jit(lambda x: device.eval_base_images(x, norm))(images)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


def _input_config(**overrides):
  config = defaults.get_config()
  config.input.resize_size = RESIZE
  config.input.update(overrides)
  return config


@pytest.mark.parametrize('overrides,message', [
    ({'mean_subtraction': 'pixel'}, 'stats_file'),
    ({'mean_subtraction': 'median'}, 'mean_subtraction'),
    ({'channel_order': 'GRB'}, 'channel_order'),
])
def test_bad_conventions_are_one_line_errors(overrides, message):
  with pytest.raises(ValueError, match=message) as error:
    device.Normalization.from_config(_input_config(**overrides))
  assert '\n' not in str(error.value)


def test_mean_image_of_another_size_is_refused(tmp_path):
  path = str(tmp_path / 'stats.npz')
  np.savez(path, mean_image=np.zeros((RESIZE + 1, RESIZE + 1, 3), np.float32))
  with pytest.raises(ValueError, match='resize_size'):
    device.Normalization.from_config(_input_config(
        mean_subtraction='pixel', stats_file=path))
  np.savez(path, mean_image=np.full((RESIZE, RESIZE, 3), 0.5, np.float32))
  norm = device.Normalization.from_config(_input_config(
      mean_subtraction='pixel', stats_file=path))
  assert norm.per_pixel and norm.mean.shape == (RESIZE, RESIZE, 3)
