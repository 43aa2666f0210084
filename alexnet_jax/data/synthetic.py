"""A generated image-classification dataset for the demo and the tests.

The classes are told apart only by spatial structure (a shape or a texture):
every class draws its colours, position, size and rotation from the same
distributions, so a classifier cannot win by a mean colour. Image sizes
(60..500 px), aspect ratios and a share of grayscale images mimic ImageNet's
variety. The images are written once as JPEG files in the `folder:` layout
(`ROOT/train/<class>/*.jpg`, `ROOT/val/<class>/*.jpg`), deterministically
from the parameters, into a cache directory named by a hash of them.
"""

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from typing import Callable, Optional

import numpy as np
from PIL import Image
from PIL import ImageDraw

# Bump when the drawing code changes, so old caches are not reused.
_GENERATOR_VERSION = 1
_GRAYSCALE_FRACTION = 0.1
_SIZE_RANGE = (60, 500)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
  return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _contrasting_colours(rng: np.random.Generator):
  """Foreground and background colours whose luminances differ clearly."""
  while True:
    fg, bg = _random_colour(rng), _random_colour(rng)
    lum = lambda c: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
    if abs(lum(fg) - lum(bg)) > 60:
      return fg, bg


def _polygon(cx, cy, radius, angle, points):
  """Vertices (x, y) of a regular polygon."""
  return [(cx + radius * np.cos(angle + 2 * np.pi * k / points),
           cy + radius * np.sin(angle + 2 * np.pi * k / points))
          for k in range(points)]


def _rotated(points, cx, cy, angle):
  c, s = np.cos(angle), np.sin(angle)
  return [(cx + c * (x - cx) - s * (y - cy), cy + s * (x - cx) + c * (y - cy))
          for x, y in points]


def _shape_frame(rng, w, h):
  """A random centre, radius and angle that keep a shape mostly in frame."""
  r = rng.uniform(0.25, 0.42) * min(w, h)
  cx = rng.uniform(r, w - r)
  cy = rng.uniform(r, h - r)
  return cx, cy, r, rng.uniform(0, 2 * np.pi)


def _disc(draw, rng, w, h, fg, bg):
  cx, cy, r, _ = _shape_frame(rng, w, h)
  draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)


def _ring(draw, rng, w, h, fg, bg):
  cx, cy, r, _ = _shape_frame(rng, w, h)
  draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
  inner = r * rng.uniform(0.45, 0.65)
  draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=bg)


def _square(draw, rng, w, h, fg, bg):
  cx, cy, r, angle = _shape_frame(rng, w, h)
  draw.polygon(_polygon(cx, cy, r, angle, 4), fill=fg)


def _triangle(draw, rng, w, h, fg, bg):
  cx, cy, r, angle = _shape_frame(rng, w, h)
  draw.polygon(_polygon(cx, cy, r, angle, 3), fill=fg)


def _cross(draw, rng, w, h, fg, bg):
  cx, cy, r, angle = _shape_frame(rng, w, h)
  t = r * rng.uniform(0.25, 0.4)
  for bar in ([(cx - r, cy - t), (cx + r, cy - t), (cx + r, cy + t),
               (cx - r, cy + t)],
              [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy + r),
               (cx - t, cy + r)]):
    draw.polygon(_rotated(bar, cx, cy, angle), fill=fg)


def _stripes(angle_range):
  """A texture class: parallel stripes at an angle drawn from angle_range."""
  def draw_stripes(draw, rng, w, h, fg, bg):
    angle = rng.uniform(*angle_range) * rng.choice([-1, 1])
    period = rng.uniform(0.1, 0.2) * min(w, h)
    c, s = np.cos(angle), np.sin(angle)
    extent = w + h
    cx, cy = w / 2, h / 2
    offset = rng.uniform(0, period)
    for d in np.arange(-extent + offset, extent, period):
      # A band of width period/2 along direction (c, s), offset d across it.
      p0 = (cx - s * d, cy + c * d)
      q = [(p0[0] - c * extent, p0[1] - s * extent),
           (p0[0] + c * extent, p0[1] + s * extent)]
      dx, dy = -s * period / 2, c * period / 2
      draw.polygon([q[0], q[1], (q[1][0] + dx, q[1][1] + dy),
                    (q[0][0] + dx, q[0][1] + dy)], fill=fg)
  return draw_stripes


def _checkerboard(draw, rng, w, h, fg, bg):
  cell = rng.uniform(0.1, 0.2) * min(w, h)
  ox, oy = rng.uniform(0, 2 * cell, size=2)
  for i, y in enumerate(np.arange(-oy, h, cell)):
    for j, x in enumerate(np.arange(-ox, w, cell)):
      if (i + j) % 2 == 0:
        draw.rectangle([x, y, x + cell, y + cell], fill=fg)


def _dots(draw, rng, w, h, fg, bg):
  spacing = rng.uniform(0.12, 0.2) * min(w, h)
  r = spacing * rng.uniform(0.22, 0.32)
  ox, oy = rng.uniform(0, spacing, size=2)
  for y in np.arange(oy, h + spacing, spacing):
    for x in np.arange(ox, w + spacing, spacing):
      draw.ellipse([x - r, y - r, x + r, y + r], fill=fg)


CLASSES: dict[str, Callable] = {
    'disc': _disc,
    'square': _square,
    'triangle': _triangle,
    'cross': _cross,
    'ring': _ring,
    'horizontal_stripes': _stripes((0.0, 0.15)),
    'vertical_stripes': _stripes((np.pi / 2 - 0.15, np.pi / 2)),
    'checkerboard': _checkerboard,
    'diagonal_stripes': _stripes((np.pi / 4 - 0.15, np.pi / 4 + 0.15)),
    'dots': _dots,
}


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
  """(width, height): area and aspect ratio vary like photographs'."""
  longer = rng.uniform(_SIZE_RANGE[0] * 1.2, _SIZE_RANGE[1])
  aspect = max(1.0, rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9]) *
               rng.uniform(0.9, 1.1))
  shorter = max(_SIZE_RANGE[0], longer / aspect)
  return ((int(longer), int(shorter)) if rng.random() < 0.7
          else (int(shorter), int(longer)))


def _noisy(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
  """Adds a random linear shading and pixel noise to a drawn image."""
  pixels = np.asarray(image, dtype=np.float32)
  h, w, _ = pixels.shape
  ys = np.linspace(-1, 1, h, dtype=np.float32)[:, None, None]
  xs = np.linspace(-1, 1, w, dtype=np.float32)[None, :, None]
  shading = (xs * rng.normal(0, 20, size=3).astype(np.float32) +
             ys * rng.normal(0, 20, size=3).astype(np.float32))
  noise = rng.standard_normal(pixels.shape, dtype=np.float32)
  noise *= rng.uniform(5, 25)
  return np.clip(pixels + shading + noise, 0, 255).astype(np.uint8)


def draw_example(class_index: int, rng: np.random.Generator) -> Image.Image:
  """One image of class `class_index` (RGB, or L for ~10% of images)."""
  w, h = _image_size(rng)
  fg, bg = _contrasting_colours(rng)
  image = Image.new('RGB', (w, h), bg)
  list(CLASSES.values())[class_index](ImageDraw.Draw(image), rng, w, h, fg, bg)
  image = Image.fromarray(_noisy(image, rng))
  if rng.random() < _GRAYSCALE_FRACTION:
    image = image.convert('L')
  return image


def _write_examples(root: str, split: str, class_index: int, count: int,
                    seed: int) -> None:
  name = list(CLASSES)[class_index]
  directory = os.path.join(root, split, f'{class_index:02d}_{name}')
  os.makedirs(directory, exist_ok=True)
  split_id = {'train': 0, 'val': 1}[split]
  for i in range(count):
    rng = np.random.default_rng([seed, split_id, class_index, i])
    draw_example(class_index, rng).save(
        os.path.join(directory, f'{name}_{i:05d}.jpg'), quality=90)


def _run(jobs: list[tuple], max_workers: int) -> None:
  """Runs `_write_examples` on each job, in worker processes if > 1.

  Workers are spawned, not forked: the caller may already run JAX's and
  TensorFlow's threads, which a fork would copy in an unsafe state.
  """
  if max_workers <= 1:
    for job in jobs:
      _write_examples(*job)
    return
  with concurrent.futures.ProcessPoolExecutor(
      max_workers, mp_context=multiprocessing.get_context('spawn')) as pool:
    for future in [pool.submit(_write_examples, *job) for job in jobs]:
      future.result()


def _params(num_classes: int, train_per_class: int, val_per_class: int,
            seed: int) -> dict[str, int]:
  return dict(num_classes=num_classes, train_per_class=train_per_class,
              val_per_class=val_per_class, seed=seed,
              version=_GENERATOR_VERSION)


def dataset_dir(num_classes: int, train_per_class: int, val_per_class: int,
                seed: int, cache_dir: Optional[str] = None) -> str:
  """Where the dataset with these parameters lives (generated or not)."""
  params = _params(num_classes, train_per_class, val_per_class, seed)
  digest = hashlib.sha256(
      json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
  cache_dir = cache_dir or os.path.expanduser('~/.cache/alexnet_jax')
  return os.path.join(cache_dir, f'synthetic-{digest}')


def generate(num_classes: int, train_per_class: int, val_per_class: int,
             seed: int, cache_dir: Optional[str] = None,
             max_workers: Optional[int] = None) -> str:
  """Returns the dataset's root directory, generating it on first use.

  Generation writes into a temporary sibling directory and renames it into
  place, so an interrupted run never leaves a partial dataset behind.
  """
  if not 1 <= num_classes <= len(CLASSES):
    raise ValueError(f'synthetic num_classes must be in 1..{len(CLASSES)}, '
                     f'got {num_classes}.')
  root = dataset_dir(num_classes, train_per_class, val_per_class, seed,
                     cache_dir)
  if os.path.isdir(root):
    return root
  parent = os.path.dirname(root)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(root) + '.tmp-', dir=parent)
  try:
    jobs = [(tmp, split, c, count, seed)
            for split, count in (('train', train_per_class),
                                 ('val', val_per_class))
            for c in range(num_classes)]
    _run(jobs, max_workers or os.cpu_count())
    with open(os.path.join(tmp, 'params.json'), 'w') as f:
      json.dump(_params(num_classes, train_per_class, val_per_class, seed), f)
    os.rename(tmp, root)
  except OSError:
    if not os.path.isdir(root):  # Not a lost race with another process.
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return root


def generate_from_config(config) -> str:
  """`generate` with the parameters in `config.synthetic`."""
  s = config.synthetic
  return generate(s.num_classes, s.train_per_class, s.val_per_class, s.seed,
                  s.cache_dir)
