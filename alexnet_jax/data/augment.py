"""The host's augmentation: uint8 crops and flips, PCA lighting offsets.

Every draw is keyed by (seed, epoch, example index) alone, so it depends
neither on where the pipeline started nor on which process reads the
example. The float work (lighting, mean, std,
scale, channel order; the evaluation crops) runs in the compiled steps, in
`data/device.py`.
"""

from typing import Callable

import numpy as np
import tensorflow as tf

from alexnet_jax.data import decode
from alexnet_jax.data import device


def model_input_size(config) -> int:
  """The model's square input side: 227 for the Caffe variant, else 224."""
  if config.model.get('input_size') is not None:
    return config.model.input_size
  return 227 if config.model.variant == 'caffe' else 224


def random_crop_offset(seed: tf.Tensor, image_size: int,
                       crop_size: int) -> tf.Tensor:
  """A uniform (y, x) offset of a crop_size window inside image_size."""
  return tf.random.stateless_uniform([2], seed, minval=0,
                                     maxval=image_size - crop_size + 1,
                                     dtype=tf.int32)


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


def _element_seed(seed: int, epoch: int, index: tf.Tensor) -> tf.Tensor:
  key = tf.constant([seed, 0], tf.int64)
  key = tf.random.experimental.stateless_fold_in(key, epoch)
  return tf.random.experimental.stateless_fold_in(key, index)


def make_train_preprocess(config, *, seed: int,
                          epoch: int) -> Callable[[dict], dict]:
  """The host's share of the training transform of one record.

  Returns the uint8 crop, flipped or not, its PCA lighting offset and where
  it lies ('crop': y, x, flipped); `data.device.train_images` does the
  float work in the compiled step. Every draw is keyed by (seed, epoch,
  example index).
  """
  inp = config.input
  size, resize = model_input_size(config), inp.resize_size
  stats = device.input_stats(config)

  def preprocess(record):
    crop_seed, flip_seed, pca_seed = tf.unstack(
        tf.random.experimental.stateless_split(
            _element_seed(seed, epoch, record['index']), 3))
    if inp.random_crop:
      offset = random_crop_offset(crop_seed, resize, size)
    else:
      offset = tf.fill([2], (resize - size) // 2)
    if inp.decode_and_crop:
      image = decode.decode_crop_window(record['encoded'], resize, size, offset,
                                 inp.antialias)
    else:
      image = decode.base_crop(record['encoded'], resize, offset, size,
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
    image = decode.base_image(record['encoded'], resize, config.input.antialias)
    image.set_shape([resize, resize, 3])
    return {'image': image, 'label': record['label'], 'index': record['index']}

  return preprocess
