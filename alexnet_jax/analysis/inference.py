"""Inference from a checkpoint under its own input conventions: images
(or `.npy` arrays) in, logits and top-k class names out. `tools/predict` is
the command line.
"""

from typing import Any, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import checkpoint
from alexnet_jax import defaults
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax.data import augment
from alexnet_jax.data import device

TOP_K = 5
_BATCH = 32  # Images per forward pass.


def eval_config(meta: dict[str, Any]) -> Any:
  """The default config with the checkpoint's input conventions and size."""
  config = defaults.get_config()
  config.input.update(meta['input'])
  config.model.input_size = meta['model']['input_size']
  config.dataset = meta.get('dataset', config.dataset)
  return config


def _load_npy(path: str, size: int) -> np.ndarray:
  """Already-preprocessed images [N, size, size, 3] from a .npy file; one
  that holds pickled objects is refused (np.load's allow_pickle=False)."""
  try:
    array = np.load(path).astype(np.float32)
  except ValueError as error:
    raise ValueError(f'{path}: {error}') from None
  array = array[None] if array.ndim == 3 else array
  if array.shape[1:] != (size, size, 3):
    raise ValueError(f'{path}: shape {array.shape}, expected [N, {size}, '
                     f'{size}, 3] images in the checkpoint\'s convention')
  return array


def _load_image(path: str, preprocess, norm: device.Normalization,
                size: int) -> np.ndarray:
  """One encoded image file through the evaluation transform, [1, S, S, 3].

  The host's base image, then the device's normalisation and centre crop,
  as in evaluation.
  """
  with open(path, 'rb') as f:
    record = {'encoded': tf.constant(f.read()), 'label': 0, 'index': 0}
  try:
    base = preprocess(record)['image'].numpy()[None]
  except tf.errors.InvalidArgumentError:
    raise ValueError(f'{path}: not a decodable image') from None
  return np.asarray(device.centre_crop(device.eval_base_images(base, norm),
                                       size))


def load_images(paths: Sequence[str], config: Any) -> tuple[np.ndarray,
                                                           list[str]]:
  """Preprocessed images [N, S, S, 3] and a name for each, in input order."""
  preprocess = augment.make_eval_preprocess(config)
  norm = device.Normalization.from_config(config)
  images, names = [], []
  for path in paths:
    if path.endswith('.npy'):
      images.append(_load_npy(path, config.model.input_size))
      names += [f'{path}[{i}]' for i in range(len(images[-1]))]
    else:
      images.append(_load_image(path, preprocess, norm,
                                config.model.input_size))
      names.append(path)
  return np.concatenate(images), names


def class_names(dataset: str, num_classes: int) -> list[str] | None:
  """TFDS's label names for `dataset`, if it is a TFDS dataset with them."""
  if dataset == 'synthetic' or dataset.startswith('folder:'):
    return None
  try:
    names = tfds.builder(dataset).info.features['label'].names
  except Exception:  # pylint: disable=broad-except
    return None  # Names are a convenience; indices always work.
  return list(names) if len(names) == num_classes else None


def logits_of(params: Any, spec: models.AlexNetSpec,
              images: np.ndarray) -> np.ndarray:
  """The model's logits for `images`, in batches of `_BATCH`, on one device."""
  model = models.AlexNet(spec)
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False),
                  compiler_options=parallel.compiler_options())
  return np.concatenate([np.asarray(apply(params, images[i:i + _BATCH]))
                         for i in range(0, len(images), _BATCH)])


def top_k_lines(name: str, logits: np.ndarray,
                labels: list[str] | None) -> list[str]:
  """`name:` then one `probability  class` line per top class."""
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  lines = [f'{name}:']
  for c in np.argsort(-probs)[:TOP_K]:
    label = f'{c} {labels[c]}' if labels else f'{c}'
    lines.append(f'  {probs[c]:.4f}  {label}')
  return lines


def predict(checkpoint_path: str, paths: Sequence[str]
            ) -> tuple[np.ndarray, list[str], list[str] | None]:
  """(logits [N, classes], input names, class names or None)."""
  params, spec, meta = checkpoint.load_params(checkpoint_path)
  config = eval_config(meta)
  images, names = load_images(paths, config)
  logits = logits_of(params, spec, images)
  return logits, names, class_names(config.dataset, spec.num_classes)

