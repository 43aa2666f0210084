"""Tests of the synthetic dataset: deterministic, cached, atomic, varied."""

import os

import numpy as np
import pytest

from alexnet_jax.data import synthetic

_PARAMS = dict(num_classes=3, train_per_class=3, val_per_class=1, seed=5)


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, names in os.walk(root) for f in names)


def _contents(root):
  return {f: open(os.path.join(root, f), 'rb').read() for f in _files(root)}


def _fail(*args):
  raise RuntimeError('interrupted')


def test_generation_is_deterministic(tmp_path):
  first = synthetic.generate(**_PARAMS, cache_dir=str(tmp_path / 'a'))
  second = synthetic.generate(**_PARAMS, cache_dir=str(tmp_path / 'b'))
  assert os.path.basename(first) == os.path.basename(second)
  assert _contents(first) == _contents(second)
  images = [f for f in _files(first) if f.endswith('.jpg')]
  assert len(images) == 3 * (3 + 1)
  other = synthetic.generate(**dict(_PARAMS, seed=6),
                             cache_dir=str(tmp_path / 'a'))
  assert other != first
  assert _contents(other) != _contents(first)


def test_second_call_uses_the_cache(tmp_path, monkeypatch):
  root = synthetic.generate(**_PARAMS, cache_dir=str(tmp_path))
  monkeypatch.setattr(synthetic, '_write_examples', _fail)
  assert synthetic.generate(**_PARAMS, cache_dir=str(tmp_path)) == root


def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
  monkeypatch.setattr(synthetic, '_write_examples', _fail)
  with pytest.raises(RuntimeError):
    synthetic.generate(**_PARAMS, cache_dir=str(tmp_path), max_workers=1)
  assert os.listdir(tmp_path) == []


def test_images_vary_and_classes_need_spatial_features():
  sizes, colours, labels, modes = [], [], [], []
  for c in range(len(synthetic.CLASSES)):
    for i in range(12):
      image = synthetic.draw_example(c, np.random.default_rng([0, c, i]))
      sizes.append(image.size)
      modes.append(image.mode)
      colours.append(np.asarray(image.convert('RGB'), np.float32).mean((0, 1)))
      labels.append(c)
  sizes, colours, labels = np.array(sizes), np.array(colours), np.array(labels)
  assert sizes.min() >= 60 and sizes.max() <= 500
  aspect = sizes[:, 0] / sizes[:, 1]
  assert aspect.min() < 0.8 and aspect.max() > 1.5
  assert 0.03 < np.mean(np.array(modes) == 'L') < 0.25
  # A nearest-class-mean classifier on the mean colour is near chance.
  centroids = np.stack([colours[labels == c].mean(0)
                        for c in range(len(synthetic.CLASSES))])
  predicted = np.argmin(
      ((colours[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
  assert np.mean(predicted == labels) < 0.35
