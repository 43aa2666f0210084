"""Prepared datasets: the prepare tool, the prepared source, resumption."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from alexnet_jax.data import decode
from alexnet_jax.data import iterators
from alexnet_jax.data import prepare
from alexnet_jax.data import sources

from data_config import CROP
from data_config import RESIZE
from data_config import small_data_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_config = small_data_config


def _smooth_image(rng, height, width) -> Image.Image:
  """A photo-like image: random low-frequency colour waves."""
  ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
  channels = [np.sin(rng.uniform(1, 6) * ys + rng.uniform(1, 6) * xs +
                     rng.uniform(0, 6)) for _ in range(3)]
  pixels = (np.stack(channels, -1) + 1) * 127.5
  return Image.fromarray(pixels.astype(np.uint8))


def _encode(image: Image.Image, fmt='JPEG', **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def _write_folder(root, counts: dict[str, int], rng, extra=None) -> str:
  """train/ and val/ of smooth JPEGs of varied sizes, `counts` per class."""
  for split in ('train', 'val'):
    for name, count in counts.items():
      directory = os.path.join(root, split, name)
      os.makedirs(directory)
      files = [_encode(_smooth_image(rng, *rng.integers(30, 90, 2)),
                       quality=95) for _ in range(count)]
      files += (extra or {}).get(name, []) if split == 'train' else []
      for i, data in enumerate(files):
        with open(os.path.join(directory, f'{i:03d}.JPEG'), 'wb') as f:
          f.write(data)
  return f'folder:{root}'


def _prepare(config, out, **kwargs):
  return prepare.prepare(config, str(out), workers=1, **kwargs)


@pytest.fixture(scope='module')
def smooth_folder(tmp_path_factory):
  return _write_folder(tmp_path_factory.mktemp('smooth'),
                       {'a': 4, 'b': 3, 'c': 3}, np.random.default_rng(0))


def _no_augmentation(config):
  config.input.random_crop = False
  config.input.random_flip = False
  config.input.pca_lighting_sigma = 0.0
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _rms(a, b) -> float:
  return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b)**2)))


def test_base_image_is_the_rounded_float_base_image():
  rng = np.random.default_rng(0)
  files = [_encode(_smooth_image(rng, h, w)) for h, w in
           ((50, 70), (90, 41), (7, 10), (RESIZE, RESIZE), (300, 200))]
  files.append(_encode(_smooth_image(rng, 45, 60).convert('L'), 'PNG'))
  for data in files:
    exact = decode.base_image(data, RESIZE).numpy()
    assert exact.dtype == np.uint8 and exact.shape == (RESIZE, RESIZE, 3)
    np.testing.assert_array_equal(
        exact, decode.to_uint8(decode.base_image_float(data, RESIZE)).numpy())
  # A stored base image is only decoded, not resampled.
  stored = tf.io.encode_jpeg(decode.base_image(files[0], RESIZE), quality=90)
  np.testing.assert_array_equal(decode.base_image(stored, RESIZE),
                                tf.io.decode_jpeg(stored, channels=3))


def test_prepare_stores_decodable_images_and_lists_the_rest(tmp_path):
  rng = np.random.default_rng(1)
  good = _encode(_smooth_image(rng, 60, 80))
  bad = {'a': [good[:len(good) // 2], b''], 'b': [b'not an image' * 9]}
  dataset = _write_folder(tmp_path / 'src', {'a': 5, 'b': 4}, rng, bad)
  index = _prepare(_config(dataset), tmp_path / 'out', examples_per_shard=4)

  train = index['splits']['train']
  assert train['num_listed'] == 12 and train['num_examples'] == 9
  assert train['undecodable'] == ['train/a/005.JPEG', 'train/a/006.JPEG',
                                  'train/b/004.JPEG']
  assert len(train['shards']) == 3  # ceil(12 / 4).
  assert sum(s['count'] for s in train['shards']) == 9
  assert index['splits']['val']['num_examples'] == 9
  assert index['class_names'] == ['a', 'b']
  assert (index['resize_size'], index['quality']) == (RESIZE, 90)
  assert 30 < train['psnr_min_db'] <= train['psnr_db'] < 60

  names, labels = [], []
  for shard in train['shards']:
    for record in tf.data.TFRecordDataset(str(tmp_path / 'out' /
                                              shard['file'])):
      example = tf.io.parse_single_example(record, {
          'image': tf.io.FixedLenFeature([], tf.string),
          'label': tf.io.FixedLenFeature([], tf.int64),
          'name': tf.io.FixedLenFeature([], tf.string)})
      assert tf.io.decode_jpeg(example['image']).shape == (RESIZE, RESIZE, 3)
      names.append(example['name'].numpy().decode())
      labels.append(int(example['label']))
  assert sorted(zip(names, labels)) == sorted(
      [(f'train/a/{i:03d}.JPEG', 0) for i in range(5)] +
      [(f'train/b/{i:03d}.JPEG', 1) for i in range(4)])
  # Every shard holds both classes (example j goes to shard j mod 3).
  assert all(len({n.split('/')[1] for n in names[k:k + 3]}) == 2
             for k in (0, 3, 6))


@pytest.mark.slow
def test_prepared_and_raw_paths_give_the_same_batches(smooth_folder, tmp_path):
  index = _prepare(_config(smooth_folder), tmp_path / 'p',
                   examples_per_shard=100)  # One shard: one block, as raw.
  bound = 255 * 10**(-index['splits']['train']['psnr_min_db'] / 20)
  raw_config = _config(smooth_folder, batch_size=4)
  prepared_config = _config(f'prepared:{tmp_path / "p"}', batch_size=4)
  raw = _take(iterators.create_train_iterator(raw_config), 8)  # 3.2 epochs.
  prepared = _take(iterators.create_train_iterator(prepared_config), 8)
  for a, b in zip(raw, prepared):
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['crop'], b['crop'])
    np.testing.assert_array_equal(a['lighting'], b['lighting'])
    assert a['image'].dtype == b['image'].dtype == np.uint8
    assert _rms(a['image'], b['image']) <= 2 * bound
  assert _rms(raw[0]['image'], raw[1]['image']) > 10 * bound

  raw_eval = list(iterators.create_eval_iterator(raw_config))
  prepared_eval = list(iterators.create_eval_iterator(prepared_config))
  raw_labels = np.concatenate([b['label'][b['mask']] for b in raw_eval])
  prepared_labels = np.concatenate([b['label'][b['mask']]
                                    for b in prepared_eval])
  np.testing.assert_array_equal(raw_labels, prepared_labels)
  for a, b in zip(raw_eval, prepared_eval):
    assert _rms(a['image'], b['image']) <= 2 * bound


@pytest.fixture(scope='module')
def three_shards(smooth_folder, tmp_path_factory):
  out = tmp_path_factory.mktemp('three')
  _prepare(_config(smooth_folder), out, examples_per_shard=4)
  return f'prepared:{out}'


def _keys(batches):
  """Each example's identity: its label and rounded pixel sum."""
  return [(int(y), round(float(x.sum()), 2)) for b in batches
          for x, y in zip(b['image'], b['label'])]


def test_prepared_epochs_are_permutations_split_by_rows(three_shards):
  config = _no_augmentation(_config(three_shards, batch_size=2))
  assert sources.num_train_examples(config) == 10
  readers = [iterators.create_train_iterator(config, process_index=p,
                                             process_count=2)
             for p in range(2)]
  one = iterators.create_train_iterator(config)
  epochs = []
  for _ in range(3):
    rows = [_keys(_take(reader, 5)) for reader in readers]
    # Global batch s: row 0 from process 0, row 1 from process 1.
    interleaved = [key for pair in zip(*rows) for key in pair]
    assert interleaved == _keys(_take(one, 5))
    epochs.append(interleaved)
  assert all(r.get_state()['epoch'] == 3 for r in readers)
  assert all(sorted(e) == sorted(epochs[0]) for e in epochs)
  assert len(set(epochs[0])) == 10
  assert len({tuple(e) for e in epochs}) > 1  # Reshuffled.


@pytest.mark.parametrize('k', [1, 3, 6])
def test_prepared_iterator_resumes_exactly(three_shards, k):
  config = _config(three_shards, batch_size=3)  # Batches span epochs.
  uninterrupted = iterators.create_train_iterator(config)
  _take(uninterrupted, k)
  state = uninterrupted.get_state()
  expected = _take(uninterrupted, 4)
  resumed = iterators.create_train_iterator(config)
  resumed.set_state(dict(state))
  for a, b in zip(_take(resumed, 4), expected):
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['image'], b['image'])
  assert resumed.get_state() == uninterrupted.get_state()


def test_prepared_settings_must_match_the_config(three_shards):
  config = _config(three_shards)
  config.input.resize_size = RESIZE + 8
  with pytest.raises(ValueError, match='resize_size'):
    sources.num_classes(config)


def test_prepare_refuses_other_settings_in_the_same_directory(smooth_folder,
                                                              tmp_path):
  _prepare(_config(smooth_folder), tmp_path, examples_per_shard=100)
  with pytest.raises(ValueError, match='quality'):
    _prepare(_config(smooth_folder), tmp_path, examples_per_shard=100,
             quality=80)


def _marker_files(out):
  return sorted(f for f in os.listdir(out) if f.endswith('.tfrecord.json'))


@pytest.mark.slow
def test_prepare_resumes_after_being_killed(tmp_path, capsys):
  rng = np.random.default_rng(2)
  root = tmp_path / 'src'
  for split in ('train', 'val'):
    for name in ('a', 'b'):
      os.makedirs(root / split / name)
      for i in range(3 if split == 'train' else 1):
        # Large images: each one-image shard takes a while to resize.
        _smooth_image(rng, 1000, 1200).save(root / split / name / f'{i}.jpg')
  out = tmp_path / 'out'
  command = [sys.executable, '-m', 'alexnet_jax.tools.prepare',
             f'--config={REPO}/configs/two_tower.py', f'--out={out}',
             f'--config.dataset=folder:{root}',
             f'--config.input.resize_size={RESIZE}', '--examples_per_shard=1',
             '--workers=1']
  proc = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  start = time.time()
  while not (out.exists() and _marker_files(out)):
    assert proc.poll() is None, proc.communicate()
    assert time.time() - start < 120
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = _marker_files(out)
  assert 1 <= len(done) < 8  # 6 train and 2 val shards.
  assert not (out / 'index.json').exists()
  times = {f: os.stat(out / f).st_mtime_ns for f in done}

  config = _config(f'folder:{root}')
  index = prepare.prepare(config, str(out), examples_per_shard=1, workers=1)
  assert f'{8 - len(done)} shards to write here ({len(done)} done)' in (
      capsys.readouterr().out)
  assert all(os.stat(out / f).st_mtime_ns == t for f, t in times.items())
  assert not [f for f in os.listdir(out) if '.tmp-' in f]
  assert index['splits']['train']['num_examples'] == 6
  assert index['splits']['val']['num_examples'] == 2
  with open(out / 'index.json') as f:
    assert json.load(f) == index


def _records(directory) -> dict[str, list[dict]]:
  """Every shard's records as {feature: values} (a record's bytes depend on
  the writing process's map order; its features do not)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shards = {}
  for name in sorted(os.listdir(directory)):
    if name.endswith('.tfrecord'):
      shards[name] = [
          {key: list(getattr(feature, feature.WhichOneof('kind')).value)
           for key, feature in tf.train.Example.FromString(
               record.numpy()).features.feature.items()}
          for record in tf.data.TFRecordDataset(str(directory / name))]
  return shards


@pytest.mark.slow
def test_two_hosts_prepare_and_verify_their_own_shards(smooth_folder,
                                                       tmp_path, capsys):
  """Two hosts (--process_index of --process_count=2) write the shards one
  host writes alone, each its own half; each --verify checks and repairs
  only its own."""
  config = _config(smooth_folder)
  single, shared = tmp_path / 'single', tmp_path / 'shared'
  _prepare(config, single, examples_per_shard=2)  # 5 shards per split.
  command = [sys.executable, '-m', 'alexnet_jax.tools.prepare',
             f'--config={REPO}/configs/two_tower.py', f'--out={shared}',
             f'--config.dataset={smooth_folder}',
             f'--config.input.resize_size={RESIZE}',
             f'--config.model.input_size={CROP}', '--examples_per_shard=2',
             '--workers=1', '--process_count=2']
  env = dict(os.environ, PYTHONPATH=REPO)
  first = subprocess.run([*command, '--process_index=0'], env=env,
                         capture_output=True, text=True)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'shards of other hosts are missing' in first.stdout
  assert _marker_files(shared) == sorted(
      prepare.shard_name(split, shard, 5) + '.json'
      for split in ('train', 'val') for shard in (0, 2, 4))
  index = _prepare(config, shared, examples_per_shard=2, process_index=1,
                   process_count=2)
  assert index is not None  # The last host to finish writes the index.
  assert '4 shards to write here (0 done)' in capsys.readouterr().out
  assert sorted(os.listdir(shared)) == sorted(os.listdir(single))
  assert _records(shared) == _records(single)

  damaged = shared / prepare.shard_name('train', 3, 5)
  damaged.write_bytes(damaged.read_bytes()[:-100])
  assert prepare.verify(config, str(shared), workers=1, process_index=0,
                        process_count=2).damaged == []  # Not host 0's.
  second = subprocess.run([*command, '--process_index=1', '--verify'],
                          env=env, capture_output=True, text=True)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'damaged_shards 1' in second.stdout.splitlines()
  assert _records(shared) == _records(single)


def _main(workdir, overrides):
  return [sys.executable, '-m', 'alexnet_jax.main',
          f'--config={REPO}/configs/demo.py', f'--workdir={workdir}',
          *[f'--config.{k}={v}' for k, v in overrides.items()]]


def _steps(workdir):
  from alexnet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  return checkpoint.manager(os.path.join(workdir, 'checkpoints')).all_steps()


def _params(config, workdir):
  """The latest checkpoint's step and parameters, on one device."""
  import jax  # pylint: disable=g-import-not-at-top

  from alexnet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from alexnet_jax import parallel  # pylint: disable=g-import-not-at-top
  mngr = checkpoint.manager(os.path.join(workdir, 'checkpoints'))
  spec = parallel.spec_of(config)
  one_device = parallel.create_strategy('single', 1, spec, 1)
  restored = checkpoint.restore(
      mngr, mngr.latest_step(),
      params_like=parallel.abstract_params(spec, one_device))
  return mngr.latest_step(), jax.tree.leaves(restored['params'])


@pytest.mark.slow
def test_training_on_prepared_data_resumes_exactly_after_sigkill(
    tiny_config_factory, tmp_path):
  config = tiny_config_factory()
  _prepare(config, tmp_path / 'data', examples_per_shard=16)  # 3 shards.
  base = {'dataset': f'prepared:{tmp_path / "data"}',
          'input.resize_size': config.input.resize_size,
          'model.input_size': config.model.input_size,
          'model.num_classes': config.model.num_classes,
          'model.conv_features': '(8, 16, 24, 24, 16)',
          'model.fc_features': '(32, 32)', 'batch_size': 8,
          'eval_batch_size': 8, 'log_every_steps': 1,
          'eval_ten_crop': False, 'checkpoint_every_steps': 3}
  env = dict(os.environ, PYTHONPATH=REPO)
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(
      _main(killed, {**base, 'num_train_steps': 10_000,
                     'eval_every_steps': 10_000}),
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  start = time.time()
  while not (killed.exists() and _steps(killed)):
    assert proc.poll() is None, proc.communicate()
    assert time.time() - start < 240
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  target = max(_steps(killed)) + 7  # Past an epoch boundary (48 images).
  common = {**base, 'num_train_steps': target, 'eval_every_steps': target}
  for workdir in (killed, tmp_path / 'straight'):  # Resumed, uninterrupted.
    subprocess.run(_main(workdir, common), env=env, check=True,
                   capture_output=True)
  step_a, resumed = _params(config, str(killed))
  step_b, straight = _params(config, str(tmp_path / 'straight'))
  assert step_a == step_b == target
  for a, b in zip(resumed, straight):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('antialias', [True, False])
def test_base_crop_is_the_crop_of_the_base_image(antialias):
  """The training crop resizes only its window: the same pixels."""
  rng = np.random.default_rng(3)
  shapes = ((375, 500), (500, 333), (RESIZE, RESIZE + 9), (7, 10),
            (RESIZE, RESIZE), (1100, 803), (RESIZE - 3, RESIZE + 40))
  for height, width in shapes:
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(pixels), quality=95)
    base = decode.base_image(data, RESIZE, antialias).numpy()
    for offset in ((0, 0), (3, 8), (RESIZE - CROP, RESIZE - CROP), (5, 0)):
      window = decode.base_crop(data, RESIZE, tf.constant(offset), CROP,
                            antialias).numpy().astype(int)
      expected = base[offset[0]:offset[0] + CROP, offset[1]:offset[1] + CROP]
      # Rounding order in the vectorised resize: rare values one level off.
      assert np.abs(window - expected).max() <= 1
      assert np.mean(window != expected) < 0.005
