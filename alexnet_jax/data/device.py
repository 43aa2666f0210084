"""The input's float work, inside the compiled steps (no TensorFlow here).

The host sends uint8 pixels: training crops already cut and flipped, with
each image's PCA lighting offset and where its crop lies ('crop': y, x,
flipped); evaluation images are the whole resize_size base image. Here they
become the model's float input:

  x = image / 255 + lighting
  x = (x - mean) / std * value_scale, channels reversed for BGR

where the mean is per channel, or the window of a per-pixel mean image under
the crop (flipped with it). Flipping commutes with every per-pixel step, so
this is the same function as normalising the crop before flipping it.
Evaluation normalises the base image once and cuts the centre crop and the
paper's ten crops (4 corners and the centre, and their mirror images) from
it on the device.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TRAIN_KEYS = ('image', 'lighting', 'crop', 'label')
EVAL_KEYS = ('image', 'label', 'mask')
# The centre crop's place among `ten_crop_views`.
CENTRE_VIEW = 4


def input_stats(config: Any) -> dict[str, np.ndarray]:
  """Mean and PCA constants: from config.input.stats_file if set."""
  inp = config.input
  stats = dict(mean_rgb=np.asarray(inp.mean_rgb, np.float32),
               eigval=np.asarray(inp.eigval, np.float32),
               eigvec=np.asarray(inp.eigvec, np.float32))
  if inp.get('stats_file'):
    with np.load(inp.stats_file) as f:
      stats.update({k: f[k] for k in f.files})
  return stats


@dataclasses.dataclass(frozen=True, eq=False)
class Normalization:
  """Mean subtraction, std division, output scale and channel order."""
  mean: np.ndarray        # [3], or [R, R, 3] per pixel; [0, 1] pixel scale.
  std: np.ndarray | None  # [3] on the [0, 1] scale (torchvision); or None.
  scale: float
  bgr: bool

  @classmethod
  def from_config(cls, config: Any) -> 'Normalization':
    """The configured conventions; a one-line ValueError for bad ones."""
    inp = config.input
    stats = input_stats(config)
    if inp.mean_subtraction == 'channel':
      mean = stats['mean_rgb']
    elif inp.mean_subtraction == 'pixel':
      if 'mean_image' not in stats:
        raise ValueError("mean_subtraction='pixel' needs config.input."
                         'stats_file from alexnet_jax.tools.data_stats.')
      mean = stats['mean_image']
      if mean.shape != (inp.resize_size, inp.resize_size, 3):
        raise ValueError(f'mean image {mean.shape} does not match '
                         f'resize_size {inp.resize_size}; recompute the '
                         'stats.')
    elif inp.mean_subtraction == 'none':
      mean = np.zeros(3, np.float32)
    else:
      raise ValueError(f'unknown mean_subtraction {inp.mean_subtraction!r}')
    if inp.channel_order not in ('RGB', 'BGR'):
      raise ValueError(f'unknown channel_order {inp.channel_order!r}')
    std = inp.get('std_rgb')
    return cls(np.asarray(mean, np.float32),
               None if std is None else np.asarray(std, np.float32),
               float(inp.get('value_scale', 1.0)),
               inp.channel_order == 'BGR')

  @property
  def per_pixel(self) -> bool:
    return self.mean.ndim == 3

  def __call__(self, images: jax.Array, mean: jax.Array) -> jax.Array:
    """(images - mean) / std * scale, to BGR if asked; [0, 1]-scale input."""
    images = images - mean
    if self.std is not None:
      images = images / jnp.asarray(self.std)
    images = images * self.scale
    return images[..., ::-1] if self.bgr else images


def _to_unit(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 255.0


def _flip_if(images: jax.Array, flipped: jax.Array) -> jax.Array:
  """Mirrors [..., H, W, C] left-right where `flipped` (a scalar) is true."""
  return jnp.where(flipped, jnp.flip(images, axis=-2), images)


def _mean_windows(norm: Normalization, crop: jax.Array, size: int,
                  out_sharding: Any) -> jax.Array:
  """The mean under each crop: [3], or [B, size, size, 3] per pixel.

  The per-pixel windows are one gather, laid out like the batch.
  """
  mean = jnp.asarray(norm.mean)
  if not norm.per_pixel:
    return mean
  steps = jnp.arange(size)
  rows = crop[:, 0, None] + steps
  cols = crop[:, 1, None] + jnp.where(crop[:, 2:] > 0, size - 1 - steps,
                                      steps)
  return mean.at[rows[:, :, None], cols[:, None, :]].get(
      out_sharding=out_sharding)


def train_images(batch: dict[str, jax.Array],
                 norm: Normalization) -> jax.Array:
  """The model's float32 input from a host training batch.

  `batch['image']` is uint8 [B, S, S, 3], cropped and flipped;
  `batch['lighting']` float32 [B, 3] on the [0, 1] scale; `batch['crop']`
  int32 [B, 3] (y, x, flipped) in the resize_size base image.
  """
  images = _to_unit(batch['image']) + batch['lighting'][:, None, None, :]
  return norm(images, _mean_windows(norm, batch['crop'], images.shape[1],
                                    jax.typeof(images).sharding))


def eval_base_images(images: jax.Array, norm: Normalization) -> jax.Array:
  """Normalised float32 [B, R, R, 3] base images from uint8 ones."""
  return norm(_to_unit(images), jnp.asarray(norm.mean))


def centre_crop(images: jax.Array, size: int) -> jax.Array:
  """The centred size x size window of [B, R, R, 3] images."""
  start = (images.shape[1] - size) // 2
  return images[:, start:start + size, start:start + size]


def ten_crop_views(resize: int, size: int) -> np.ndarray:
  """int32 [10, 3] (y, x, flipped): corners, centre, then their mirrors."""
  far, mid = resize - size, (resize - size) // 2
  corners = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
  return np.array([(y, x, f) for f in (0, 1) for y, x in corners], np.int32)


def crop_view(images: jax.Array, view: jax.Array, size: int) -> jax.Array:
  """One view (y, x, flipped) of [B, R, R, 3] images: [B, size, size, 3]."""
  batch, _, _, channels = images.shape
  cut = jax.lax.dynamic_slice(images, (0, view[0], view[1], 0),
                              (batch, size, size, channels))
  return _flip_if(cut, view[2] > 0)


def train_batch_shapes(batch_size: int, input_size: int
                       ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Shape and dtype of each key of a training batch (see TRAIN_KEYS)."""
  return {'image': ((batch_size, input_size, input_size, 3), np.uint8),
          'lighting': ((batch_size, 3), np.float32),
          'crop': ((batch_size, 3), np.int32),
          'label': ((batch_size,), np.int32)}


def random_train_batch(rng: np.random.Generator, batch_size: int,
                       input_size: int, resize: int,
                       num_classes: int) -> dict[str, np.ndarray]:
  """A training batch of random pixels, lighting, crops and labels."""
  offsets = rng.integers(0, resize - input_size + 1, (batch_size, 2))
  flips = rng.integers(0, 2, (batch_size, 1))
  return {
      'image': rng.integers(0, 256, (batch_size, input_size, input_size, 3),
                            dtype=np.uint8),
      'lighting': rng.normal(0, 0.01, (batch_size, 3)).astype(np.float32),
      'crop': np.concatenate([offsets, flips], 1).astype(np.int32),
      'label': rng.integers(0, num_classes, batch_size).astype(np.int32)}

