"""The towers' conv1 pictures and scores: maths, training logs and the CLI."""

import glob
import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from alexnet_jax import checkpoint
from alexnet_jax import train
from alexnet_jax.analysis import features
from alexnet_jax.analysis import inference
from alexnet_jax.analysis import towers
from alexnet_jax.data import device
from alexnet_jax.data import iterators
from alexnet_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RGB = {'channel_order': 'RGB', 'std_rgb': None}


def _planted(grey_tower: int, kernels: int = 6, size: int = 11):
  """A stored conv1 kernel [2, size, size, 3, kernels]: one tower grey."""
  rng = np.random.default_rng(0)
  colour = rng.normal(size=(size, size, 3, kernels))
  grey = np.repeat(rng.normal(size=(size, size, 1, kernels)), 3, axis=2)
  towers_ = [colour, colour]
  towers_[grey_tower] = grey
  return np.stack(towers_)


def _positions(grid: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
  """Top-left corners where `tile` [h, w, 3] (uint8) appears in `grid`."""
  h, w, _ = tile.shape
  windows = np.lib.stride_tricks.sliding_window_view(grid, (h, w, 3))[:, :, 0]
  hits = np.all(np.abs(windows.astype(int) - tile.astype(int)) <= 1,
                axis=(2, 3, 4))
  return [tuple(p) for p in np.argwhere(hits)]


@pytest.mark.parametrize('grey_tower', [0, 1])
def test_planted_kernels_rank_towers_and_fill_the_grid(grey_tower):
  stored = _planted(grey_tower)
  kernels = towers.rgb_kernels(stored, RGB)
  scores = towers.color_specificity(kernels)
  assert scores[grey_tower] < 1e-12
  assert 0.55 < scores[1 - grey_tower] < 0.8  # 2/3 expected for noise.

  grid = towers.conv1_grid(kernels)
  rows_of_tower = []
  for t in range(2):
    found = []
    for k in range(stored.shape[-1]):
      w = stored[t, ..., k]
      tile = np.round((0.5 + 0.5 * w / np.abs(w).max()) * 255)
      where = _positions(grid, tile)
      assert len(where) == 1, (t, k, where)  # Every kernel, exactly once.
      found.append(where[0])
    rows_of_tower.append([y for y, _ in found])
  # One block per tower, tower 0 on top: no row of kernels is shared.
  assert max(rows_of_tower[0]) + 11 < min(rows_of_tower[1])


def test_kernels_are_read_in_the_checkpoints_rgb_pixel_space():
  # Grey in pixel space: equal weights per unit of pixel, stored multiplied
  # by the std the inputs were divided by.
  std = np.array([0.2, 0.4, 0.8])
  pattern = np.random.default_rng(1).normal(size=(1, 5, 5, 1, 3))
  stored = pattern * std[:, None]
  with_std = {'channel_order': 'RGB', 'std_rgb': std.tolist()}
  assert towers.color_specificity(towers.rgb_kernels(stored, with_std))[
      0] < 1e-12
  assert towers.color_specificity(towers.rgb_kernels(stored, RGB))[0] > 0.1
  # BGR: stored channel 0 is blue.
  blue = np.zeros((1, 3, 3, 3, 1))
  blue[..., 0, 0] = 1.0
  shown = towers.conv1_grid(towers.rgb_kernels(
      blue, {'channel_order': 'BGR', 'std_rgb': None}))
  np.testing.assert_array_equal(shown[1, 1], [128, 128, 255])


def test_nearest_neighbors_by_l2_and_cosine():
  queries = np.array([[1.0, 0.0]])
  pool = np.array([[10.0, 0.0], [0.9, 0.3], [-1.0, 0.0]])
  idx, dist = features.nearest_neighbors(queries, pool, 2, 'l2')
  np.testing.assert_array_equal(idx, [[1, 2]])
  np.testing.assert_allclose(dist, [[np.hypot(0.1, 0.3), 2.0]])
  idx, dist = features.nearest_neighbors(queries, pool, 3, 'cosine')
  np.testing.assert_array_equal(idx, [[0, 1, 2]])
  np.testing.assert_allclose(dist[0, [0, 2]], [0.0, 2.0], atol=1e-12)
  with pytest.raises(ValueError, match='--distance'):
    features.nearest_neighbors(queries, pool, 1, 'manhattan')


@pytest.fixture(scope='module')
def tiny_run(tiny_config_factory, tmp_path_factory):
  """A tower-parallel run of 4 steps, evaluated at step 4."""
  config = tiny_config_factory(mode='tower', num_devices=2)
  workdir = str(tmp_path_factory.mktemp('tiny_run'))
  train.train_and_evaluate(config, workdir, on_evaluate=(towers.conv1_hook,))
  return config, workdir


def _tensorboard_values(workdir: str) -> dict[str, list]:
  """{tag: [(step, value)]} from the run's event files."""
  out = {}
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.*')):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        out.setdefault(value.tag, []).append(
            (event.step, tf.make_ndarray(value.tensor)))
  return out


@pytest.mark.slow
def test_evaluation_logs_conv1_grid_and_scores(tiny_run):
  config, workdir = tiny_run
  logged = _tensorboard_values(workdir)
  params, _, _ = checkpoint.load_params(workdir)  # Step 4, as evaluated.
  expected = towers.color_specificity(towers.rgb_kernels(
      params['conv1']['kernel'], config.input))
  for t in range(2):
    (step, value), = logged[f'towers/color_specificity_{t}']
    assert step == 4
    assert 0.3 < float(value) < 0.95  # Near 2/3 so soon after init.
    np.testing.assert_allclose(float(value), expected[t], rtol=1e-5)
  (step, image), = logged['towers/conv1_kernels']
  assert step == 4
  png = Image.open(io.BytesIO(image[2]))  # [width, height, encoded].
  rows, cols = towers.block_shape(8)
  assert png.size == (3 * (cols * 12 + 1), 3 * (2 * (rows * 12 + 1) + 4))


def _cli_overrides(config) -> list[str]:
  keys = ('synthetic.num_classes', 'synthetic.train_per_class',
          'synthetic.val_per_class', 'synthetic.cache_dir', 'model.num_classes')
  flags = []
  for key in keys:
    value = config
    for part in key.split('.'):
      value = value[part]
    flags.append(f'--config.{key}={value}')
  return flags


@pytest.mark.slow
def test_cli_writes_the_figures_and_prints_scores(tiny_run, tmp_path):
  config, workdir = tiny_run
  out = tmp_path / 'figures'
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.visualize',
       f'--checkpoint={workdir}', f'--out={out}',
       f'--config={REPO}/configs/demo.py', *_cli_overrides(config),
       '--max_train_images=30', '--num_queries=3', '--num_neighbors=4'],
      env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  line, = [out for out in result.stdout.splitlines()
           if out.startswith('color_specificity ')]
  scores = [float(v) for v in line.split()[1:]]
  logged = _tensorboard_values(workdir)
  np.testing.assert_allclose(
      scores, [float(logged[f'towers/color_specificity_{t}'][0][1])
               for t in range(2)], atol=1e-4)
  for name in ('conv1_kernels.png', 'top5.png', 'nearest_neighbors.png'):
    with Image.open(out / name) as image:
      assert image.size[0] > 100 and image.size[1] > 100
  assert 'neighbours among 30 training images' in result.stdout


def test_missing_checkpoint_or_bad_flags_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='no complete checkpoint'):
    features.visualize(str(tmp_path / 'none'), str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='--num_queries'):
    features.visualize(str(tmp_path / 'none'), str(tmp_path / 'out'),
                        num_queries=0)


def _val_files(config) -> list[str]:
  root = os.path.join(synthetic.generate_from_config(config),
                      'val')
  first_class = sorted(os.listdir(root))[0]
  return sorted(glob.glob(os.path.join(root, first_class, '*')))


@pytest.mark.slow
def test_figures_see_what_predict_sees(tiny_run, tmp_path):
  config, workdir = tiny_run
  params, spec, meta = checkpoint.load_params(workdir)
  files = _val_files(config)[:3]  # The validation set's first records.
  eval_config = features.dataset_config(config, meta)
  embedded = features.embed(
      iterators.eval_records(config), eval_config, params,
      features.make_forward(spec, device.Normalization.from_config(
          eval_config)), limit=3, side=16)
  logits, names, labels = inference.predict(workdir, files)
  probs = np.exp(logits - logits.max(1, keepdims=True))
  np.testing.assert_allclose(embedded.probs,
                             probs / probs.sum(1, keepdims=True), atol=1e-5)
  assert embedded.images.shape == (3, 16, 16, 3)

  npy = tmp_path / 'batch.npy'
  np.save(npy, inference.load_images(files[:2], inference.eval_config(meta))[0])
  shown = features.display_images([files[0], str(npy)],
                                   inference.eval_config(meta))
  assert shown.dtype == np.uint8 and shown.shape == (3, 67, 67, 3)
  model_input = np.load(npy)[0]
  for c in range(3):  # The crop shown is the crop the model saw.
    assert np.corrcoef(shown[0, ..., c].ravel(),
                       model_input[..., c].ravel())[0, 1] > 0.99
  assert shown[1].min() == 0 and shown[2].max() == 255  # Stretched.
  plot = tmp_path / 'top5.png'
  features.plot_predictions(workdir, [*files, str(npy)], [*names, 'a', 'b'],
                             np.concatenate([logits, logits[:2]]), labels,
                             str(plot))
  with Image.open(plot) as image:
    assert image.size[0] > 100
