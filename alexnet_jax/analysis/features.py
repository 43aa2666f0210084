"""What a trained net's features show, as the paper's section 6.1 figures:
conv1's kernels per tower (Figure 3), validation images with their five most
probable classes (Figure 4 left), and the training images nearest to them in
fc7 space (Figure 4 right). `tools/visualize` is the command line.
"""

import dataclasses
import math
import os
from typing import Any, Sequence

import jax
from matplotlib.figure import Figure
import numpy as np
import tensorflow as tf

from alexnet_jax import checkpoint
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax import storage
from alexnet_jax.analysis import inference
from alexnet_jax.analysis import towers
from alexnet_jax.data import augment
from alexnet_jax.data import decode
from alexnet_jax.data import device
from alexnet_jax.data import iterators
from alexnet_jax.data import sources

DISTANCES = ('l2', 'cosine')
_BATCH = 32  # Images per forward pass; the last batch is padded.
_THUMB = 96  # Largest side of the stored training images.
_RED, _BLUE = '#d62728', '#4c72b0'


@dataclasses.dataclass
class Embedded:
  """Images with what the network makes of them."""
  images: np.ndarray    # [N, S, S, 3] uint8, the centre crop the model saw.
  labels: np.ndarray    # [N] int.
  features: np.ndarray  # [N, D] fc7 after its ReLU, all towers.
  probs: np.ndarray     # [N, classes] softmax.
  skipped: int          # Undecodable files among those read.


def make_forward(spec: models.AlexNetSpec, norm: device.Normalization):
  """Compiled (params, base images) -> (softmax probabilities, fc7 features).

  The uint8 base images are normalised and centre-cropped as the eval step
  does. fc7 comes from the layer outputs the model sows; no change to the
  model.
  """
  model = models.AlexNet(spec)

  def forward(params, base_images):
    images = device.centre_crop(device.eval_base_images(base_images, norm),
                                spec.input_size)
    logits, state = model.apply({'params': params}, images, train=False,
                                mutable=['intermediates'])
    (outputs,) = state['intermediates']['layer_outputs']
    fc7 = outputs['fc7']  # [B, towers, features]
    return jax.nn.softmax(logits), fc7.reshape(fc7.shape[0], -1)

  return jax.jit(forward, compiler_options=parallel.compiler_options())


def display_crop(encoded: tf.Tensor, config: Any, side: int) -> tf.Tensor:
  """The centre crop evaluation feeds the model, as uint8 [side, side, 3]."""
  size, resize = augment.model_input_size(config), (
      config.input.resize_size)
  image = tf.image.convert_image_dtype(decode.decode_resized(
      encoded, resize, config.input.antialias), tf.float32)  # [0, 1].
  image = decode.crop(image, tf.fill([2], (resize - size) // 2), size)
  if side != size:
    image = tf.image.resize(image, [side, side], antialias=True)
  return tf.image.convert_image_dtype(image, tf.uint8, saturate=True)


@decode.graph_only
def _examples(records: tf.data.Dataset, config: Any, side: int
              ) -> tf.data.Dataset:
  """Decodable records as {'image': uint8 crop at `side`, 'input', 'label'}.

  'input' is exactly what evaluation sends to the device: the uint8 base
  image.
  """
  preprocess = augment.make_eval_preprocess(config)

  def example(record):
    return {'image': display_crop(record['encoded'], config, side),
            'input': preprocess(record)['image'], 'label': record['label']}

  records = records.filter(
      lambda r: decode.is_decodable(r['encoded']))
  return records.map(example).ignore_errors()


def embed(records: tf.data.Dataset, config: Any, params: Any, forward,
          *, limit: int, side: int) -> Embedded:
  """The first `limit` records through the network, in batches."""
  parts = {'image': [], 'label': [], 'features': [], 'probs': []}
  for batch in _examples(records.take(limit), config, side).batch(
      _BATCH).as_numpy_iterator():
    count = len(batch['label'])
    inputs = np.pad(batch['input'], [(0, _BATCH - count)] + [(0, 0)] * 3)
    probs, features = forward(params, inputs)
    parts['image'].append(batch['image'])
    parts['label'].append(batch['label'])
    parts['features'].append(np.asarray(features)[:count])
    parts['probs'].append(np.asarray(probs)[:count])
  if not parts['label']:
    raise ValueError('no decodable images among the first '
                     f'{limit} of {config.dataset}')
  out = {k: np.concatenate(v) for k, v in parts.items()}
  return Embedded(out['image'], out['label'], out['features'], out['probs'],
                  skipped=_count(records, limit) - len(out['label']))


@decode.graph_only
def _count(records: tf.data.Dataset, limit: int) -> int:
  """How many records `take(limit)` reads (the dataset may be shorter)."""
  size = int(records.cardinality())
  if size >= 0:
    return min(size, limit)
  return sum(1 for _ in records.take(limit).map(lambda r: 0))


def nearest_neighbors(queries: np.ndarray, pool: np.ndarray, k: int,
                      distance: str = 'l2') -> tuple[np.ndarray, np.ndarray]:
  """(indices [Q, k] into `pool`, distances [Q, k]), nearest first."""
  if distance not in DISTANCES:
    raise ValueError(f'--distance: {distance!r} not in {DISTANCES}')
  q, p = queries.astype(np.float64), pool.astype(np.float64)
  if distance == 'cosine':
    norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True),
                                    1e-12)
    d = 1.0 - norm(q) @ norm(p).T
  else:
    d = ((q * q).sum(1)[:, None] + (p * p).sum(1)[None] - 2 * q @ p.T)
    d = np.sqrt(np.maximum(d, 0.0))
  order = np.argsort(d, axis=1, kind='stable')[:, :k]
  return order, np.take_along_axis(d, order, axis=1)


def spread(count: int, total: int) -> np.ndarray:
  """`count` indices spread evenly over range(total) (all if fewer)."""
  return np.unique(np.linspace(0, total - 1, min(count, total)).astype(int))


def _save(fig: Figure, path: str) -> None:
  with storage.writer(path) as f:
    fig.savefig(f, format='png', dpi=100)


def plot_conv1(kernels: np.ndarray, scores: np.ndarray, path: str) -> None:
  """Figure 3: one block of kernels per tower, titled with its score."""
  blocks = [towers.tower_block(k) for k in kernels]
  height = sum(b.shape[0] for b in blocks) / blocks[0].shape[1]
  fig = Figure(figsize=(8, 8 * height + 0.5 * len(blocks)))
  axes = fig.subplots(len(blocks), 1, squeeze=False)
  for t, (ax, block) in enumerate(zip(axes[:, 0], blocks)):
    ax.imshow(block, interpolation='nearest')
    ax.set_title(f'tower {t}: {len(kernels[t])} kernels, colour specificity '
                 f'{scores[t]:.3f}', fontsize=10)
    ax.axis('off')
  fig.tight_layout()
  _save(fig, path)


def _name(names: Sequence[str] | None, label: int) -> str:
  return names[label] if names else str(label)


def plot_top5(images: np.ndarray, probs: np.ndarray, path: str, *,
              names: Sequence[str] | None = None,
              titles: Sequence[str] | None = None,
              true_labels: np.ndarray | None = None) -> None:
  """Figure 4 left: each image over its five most probable classes as bars.

  The true class's bar, when known and among the five, is red.
  """
  count = len(images)
  cols = min(count, 4)
  rows = math.ceil(count / cols)
  fig = Figure(figsize=(3.2 * cols, 3.9 * rows))
  grid = fig.add_gridspec(2 * rows, cols, height_ratios=[3, 1.6] * rows)
  for i, (image, p) in enumerate(zip(images, probs)):
    r, c = divmod(i, cols)
    ax = fig.add_subplot(grid[2 * r, c])
    ax.imshow(image)
    ax.axis('off')
    title = titles[i] if titles else ''
    if true_labels is not None:
      title = _name(names, int(true_labels[i]))
    ax.set_title(title, fontsize=9)
    top = np.argsort(-p)[:inference.TOP_K]
    bars = fig.add_subplot(grid[2 * r + 1, c])
    colours = [_RED if true_labels is not None and k == true_labels[i]
               else _BLUE for k in top]
    bars.barh(range(len(top)), p[top], color=colours)
    bars.set_yticks(range(len(top)), [_name(names, k) for k in top],
                    fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, 1)
    bars.tick_params(axis='x', labelsize=7)
  fig.tight_layout()
  _save(fig, path)


def plot_neighbors(queries: Embedded, picked: np.ndarray, pool: Embedded,
                   neighbors: np.ndarray, distances: np.ndarray, path: str,
                   *, names: Sequence[str] | None, distance: str) -> None:
  """Figure 4 right: a validation image per row, then its neighbours."""
  rows, k = neighbors.shape
  fig = Figure(figsize=(1.6 * (k + 1), 1.8 * rows))
  axes = fig.subplots(rows, k + 1, squeeze=False)
  for row, (q, idx, dist) in enumerate(zip(picked, neighbors, distances)):
    axes[row, 0].imshow(queries.images[q])
    axes[row, 0].set_title(f'val: {_name(names, queries.labels[q])}',
                           fontsize=8, color=_RED)
    for col, (j, d) in enumerate(zip(idx, dist), start=1):
      axes[row, col].imshow(pool.images[j])
      axes[row, col].set_title(f'{_name(names, pool.labels[j])} {d:.3g}',
                               fontsize=7)
  for ax in axes.flat:
    ax.axis('off')
  fig.suptitle(f'nearest training images in fc7 ({distance} distance)',
               fontsize=10)
  fig.tight_layout()
  _save(fig, path)


def dataset_config(config: Any, meta: dict[str, Any]) -> Any:
  """`config`'s dataset with the checkpoint's input conventions and size."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.input.update(meta['input'])
    config.model.input_size = meta['model']['input_size']
  return config


def visualize(checkpoint_path: str, out_dir: str, config: Any = None, *,
              max_train_images: int = 2000, max_val_images: int = 500,
              num_queries: int = 5, num_neighbors: int = 6,
              num_top5: int = 8, distance: str = 'l2') -> dict[str, Any]:
  """Writes the figures into `out_dir`; returns scores and written paths."""
  if distance not in DISTANCES:
    raise ValueError(f'--distance: {distance!r} not in {DISTANCES}')
  for name, value in (('max_train_images', max_train_images),
                      ('max_val_images', max_val_images),
                      ('num_queries', num_queries),
                      ('num_neighbors', num_neighbors),
                      ('num_top5', num_top5)):
    if value < 1:
      raise ValueError(f'--{name}: must be at least 1, not {value}')
  params, spec, meta = checkpoint.load_params(checkpoint_path)
  out_dir = storage.check_location(out_dir, '--out')
  storage.makedirs(out_dir)
  kernels = towers.rgb_kernels(params['conv1']['kernel'], meta['input'])
  scores = towers.color_specificity(kernels)
  written = [storage.join(out_dir, 'conv1_kernels.png')]
  plot_conv1(kernels, scores, written[0])
  result = {'color_specificity': scores, 'written': written}
  if config is None:
    return result

  config = dataset_config(config, meta)
  names = sources.class_names(config)
  if len(names) != spec.num_classes:
    raise ValueError(f'the checkpoint has {spec.num_classes} classes but '
                     f'{config.dataset} has {len(names)}')
  forward = make_forward(spec, device.Normalization.from_config(config))
  size = augment.model_input_size(config)
  val = embed(iterators.eval_records(config), config, params, forward,
              limit=max_val_images, side=size)
  shown = spread(num_top5, len(val.labels))
  written.append(storage.join(out_dir, 'top5.png'))
  plot_top5(val.images[shown], val.probs[shown], written[-1], names=names,
            true_labels=val.labels[shown])

  train = embed(iterators.train_records(config), config, params,
                forward, limit=max_train_images, side=min(size, _THUMB))
  picked = spread(num_queries, len(val.labels))
  neighbors, distances = nearest_neighbors(
      val.features[picked], train.features, num_neighbors, distance)
  written.append(storage.join(out_dir, 'nearest_neighbors.png'))
  plot_neighbors(val, picked, train, neighbors, distances, written[-1],
                 names=names, distance=distance)
  result.update(val_images=len(val.labels), train_images=len(train.labels),
                skipped=val.skipped + train.skipped)
  return result


def _read_meta(checkpoint_path: str) -> dict[str, Any]:
  ckpt_dir, step = checkpoint.locate(checkpoint_path)
  mngr = checkpoint.manager(ckpt_dir)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no complete checkpoint in {ckpt_dir}')
  return checkpoint.read_meta(mngr, step)


def display_images(paths: Sequence[str], config: Any) -> np.ndarray:
  """What `predict` classified as uint8 images, one per logits row.

  Image files are shown as the centre crop the model saw; images of a
  `.npy` file (already normalised) are each stretched to 0..255.
  """
  size = augment.model_input_size(config)
  shown = []
  for path in paths:
    if path.endswith('.npy'):
      array = np.load(path).astype(np.float32)
      for image in (array[None] if array.ndim == 3 else array):
        low, high = image.min(), image.max()
        shown.append(np.round(255 * (image - low) / max(high - low, 1e-12)))
      continue
    with open(path, 'rb') as f:
      shown.append(display_crop(tf.constant(f.read()), config, size).numpy())
  return np.stack(shown).astype(np.uint8)


def plot_predictions(checkpoint_path: str, paths: Sequence[str],
                     names: Sequence[str], logits: np.ndarray,
                     labels: Sequence[str] | None, out: str) -> None:
  """`predict --plot`: each input image with its top-5 classes as bars."""
  config = inference.eval_config(_read_meta(checkpoint_path))
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  titles = [os.path.basename(n) for n in names]
  plot_top5(display_images(paths, config), probs, out,
            names=labels, titles=titles)

