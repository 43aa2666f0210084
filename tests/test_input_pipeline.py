"""Tests of the input pipeline: ops, bad files, eval counts, determinism."""

import io
import os

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from alexnet_jax import defaults
from alexnet_jax.data import augment
from alexnet_jax.data import decode
from alexnet_jax.data import device
from alexnet_jax.data import iterators
from alexnet_jax.data import sources

from data_config import CROP
from data_config import RESIZE
from data_config import small_data_config

_config = small_data_config


def _no_augmentation(config):
  config.input.random_crop = False
  config.input.random_flip = False
  config.input.pca_lighting_sigma = 0.0
  return config


def _noise_image(rng, height, width, mode='RGB'):
  channels = 1 if mode == 'L' else 3
  pixels = rng.integers(0, 256, size=(height, width, channels),
                        dtype=np.uint8)
  return Image.fromarray(pixels.squeeze(-1) if mode == 'L' else pixels)


def _encode(image, fmt, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def _good_files(rng) -> list[bytes]:
  """Decodable files in ImageNet's odd formats and sizes."""
  return [
      _encode(_noise_image(rng, 50, 70), 'JPEG', quality=95),
      _encode(_noise_image(rng, 64, 48, 'L'), 'JPEG'),               # Gray.
      _encode(_noise_image(rng, 45, 60).convert('CMYK'), 'JPEG'),    # CMYK.
      _encode(_noise_image(rng, 52, 41), 'PNG'),            # PNG as .JPEG.
      _encode(_noise_image(rng, 7, 10), 'JPEG'),              # Tiny.
      _encode(_noise_image(rng, 800, 1100), 'JPEG', quality=30),  # Large.
      _encode(_noise_image(rng, 60, 60), 'JPEG', progressive=True),
      _encode(_noise_image(rng, 44, 80), 'JPEG'),
      _encode(_noise_image(rng, 90, 46), 'JPEG'),
  ]


def _bad_files(rng) -> list[bytes]:
  """Undecodable files: truncated JPEG and PNG, empty, not an image."""
  jpeg = _encode(_noise_image(rng, 50, 50), 'JPEG')
  large = _encode(_noise_image(rng, 300, 300), 'JPEG', quality=95)
  png = _encode(_noise_image(rng, 50, 50), 'PNG')
  return [jpeg[:len(jpeg) // 2], jpeg[:-2], large[:len(large) * 3 // 4],
          png[:len(png) // 2], b'', b'this is not an image\n' * 10]


def _write_folder(root, files_by_class: dict[str, list[bytes]],
                  splits=('train', 'val')) -> str:
  for split in splits:
    for name, files in files_by_class.items():
      directory = os.path.join(root, split, name)
      os.makedirs(directory)
      for i, data in enumerate(files):
        with open(os.path.join(directory, f'img_{i:03d}.JPEG'), 'wb') as f:
          f.write(data)
  return f'folder:{root}'


@pytest.fixture(scope='module')
def messy_folder(tmp_path_factory):
  """Two classes, train == val: 9 good and 6 bad files in all."""
  rng = np.random.default_rng(0)
  good, bad = _good_files(rng), _bad_files(rng)
  dataset = _write_folder(tmp_path_factory.mktemp('messy'), {
      'a': good[:5] + bad[:2],
      'b': good[5:] + bad[2:],
  })
  return dataset, len(good), len(bad)


@pytest.fixture(scope='module')
def clean_folder(tmp_path_factory):
  """Three classes, 7 validation and 10 training images."""
  rng = np.random.default_rng(1)
  root = tmp_path_factory.mktemp('clean')
  image = lambda: _encode(_noise_image(rng, 48, 56), 'JPEG', quality=95)
  _write_folder(root, {c: [image() for _ in range(n)]
                       for c, n in (('x', 2), ('y', 3), ('z', 2))},
                splits=('val',))
  _write_folder(root, {c: [image() for _ in range(n)]
                       for c, n in (('x', 4), ('y', 3), ('z', 3))},
                splits=('train',))
  return f'folder:{root}'


def _both_ways(fn, *tensors):
  """fn applied eagerly and inside tf.data, as numpy."""
  eager = fn(*tensors)
  ds = tf.data.Dataset.from_tensors(tensors).map(fn)
  return np.asarray(eager), np.asarray(next(iter(ds)))


def _seeds(n):
  return tf.stack([tf.range(n, dtype=tf.int64),
                   tf.fill([n], tf.constant(7, tf.int64))], axis=1)


# ---------------------------------------------------------------------------
# Preprocessing ops.


def test_random_crop_offsets_cover_the_valid_range():
  seeds = _seeds(400)
  offset = lambda s: augment.random_crop_offset(s, RESIZE, CROP)
  eager = np.stack([offset(s).numpy() for s in seeds])
  in_data = np.stack(list(
      tf.data.Dataset.from_tensor_slices(seeds).map(offset)
      .as_numpy_iterator()))
  np.testing.assert_array_equal(eager, in_data)
  for axis in range(2):
    assert set(eager[:, axis]) == set(range(RESIZE - CROP + 1))


def test_crop_matches_numpy_slicing():
  image = np.random.default_rng(0).random((RESIZE, RESIZE, 3), np.float32)
  for offset in ([0, 0], [3, 8], [8, 8]):
    eager, in_data = _both_ways(lambda im, o: decode.crop(im, o, CROP),
                                tf.constant(image), tf.constant(offset))
    expected = image[offset[0]:offset[0] + CROP, offset[1]:offset[1] + CROP]
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_array_equal(in_data, expected)


def test_random_flip_flips_left_right_about_half_the_time():
  image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), np.uint8)
  seeds = _seeds(200)
  flip = lambda seed: augment.random_flip(tf.constant(image), seed)
  eager = [flip(seed) for seed in seeds]
  images = np.stack([im for im, _ in eager])
  flipped = np.array([bool(f) for _, f in eager])
  in_data = list(
      tf.data.Dataset.from_tensor_slices(seeds).map(flip).as_numpy_iterator())
  np.testing.assert_array_equal(images, np.stack([im for im, _ in in_data]))
  np.testing.assert_array_equal(flipped, [f for _, f in in_data])
  np.testing.assert_array_equal(images[flipped],
                                np.broadcast_to(image[:, ::-1],
                                                images[flipped].shape))
  np.testing.assert_array_equal(images[~flipped],
                                np.broadcast_to(image, images[~flipped].shape))
  assert 70 < flipped.sum() < 130


@pytest.mark.parametrize('convention', ['variance', 'stddev'])
def test_pca_lighting_has_the_analytic_covariance(convention):
  eigval = np.array([0.2175, 0.0188, 0.0045])
  eigvec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                     [-0.5836, -0.6948, 0.4203]])
  sigma, n = 0.1, 20_000
  light = lambda seed: augment.pca_lighting(seed, sigma, eigval, eigvec,
                                       convention)
  shifts = list(tf.data.Dataset.from_tensor_slices(_seeds(n))
                .map(light).batch(n).as_numpy_iterator())[0]
  assert shifts.shape == (n, 3)
  scale = eigval if convention == 'variance' else np.sqrt(eigval)
  expected = eigvec @ np.diag(sigma**2 * scale**2) @ eigvec.T
  np.testing.assert_allclose(np.cov(shifts.T), expected,
                             atol=0.05 * np.abs(expected).max())
  np.testing.assert_allclose(shifts.mean(0), 0, atol=0.05 * scale.max() * sigma)
  eager = light(_seeds(1)[0]).numpy()
  np.testing.assert_allclose(eager, shifts[0], rtol=1e-6, atol=1e-7)


def test_decode_handles_grayscale_cmyk_and_png():
  rng = np.random.default_rng(0)
  gray = np.asarray(decode.decode_rgb(
      _encode(_noise_image(rng, 20, 30, 'L'), 'PNG')))
  assert gray.shape == (20, 30, 3)
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
  smooth = Image.fromarray(np.full((32, 32, 3), (200, 40, 90), np.uint8))
  cmyk = np.asarray(decode.decode_rgb(_encode(smooth.convert('CMYK'), 'JPEG')))
  np.testing.assert_allclose(cmyk.mean((0, 1)), (200, 40, 90), atol=6)
  png = _noise_image(rng, 9, 11)
  np.testing.assert_array_equal(decode.decode_rgb(_encode(png, 'PNG')),
                                np.asarray(png))


def test_is_decodable_flags_exactly_the_bad_files():
  rng = np.random.default_rng(0)
  good = _good_files(rng) + [_encode(_noise_image(rng, 9, 9), f)
                             for f in ('GIF', 'BMP', 'WEBP')]
  bad = _bad_files(rng)
  eager = [bool(decode.is_decodable(tf.constant(b))) for b in good + bad]
  ds = tf.data.Dataset.from_tensor_slices(good + bad).map(decode.is_decodable)
  assert eager == list(ds.as_numpy_iterator())
  assert eager == [True] * len(good) + [False] * len(bad)


def _smooth_jpeg(height, width) -> bytes:
  ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
  pixels = np.stack([ys, xs, (ys + xs) / 2], -1) * 255
  return _encode(Image.fromarray(pixels.astype(np.uint8)), 'JPEG', quality=95)


# The window is rounded to whole source pixels: coarse for tiny images.
@pytest.mark.parametrize('shape, tolerance', [((300, 400), 0.01),
                                              ((7, 10), 0.05),
                                              ((2000, 1500), 0.01)])
def test_decode_and_crop_approximates_the_exact_path(shape, tolerance):
  data = _smooth_jpeg(*shape)
  for offset in ([0, 0], [5, 8], [8, 2]):
    exact = decode.crop(decode.decode_resized(data, RESIZE), offset, CROP)
    approx, in_data = _both_ways(
        lambda d, o: decode.decode_crop_window(d, RESIZE, CROP, o),
        tf.constant(data), tf.constant(offset))
    assert approx.shape == (CROP, CROP, 3)
    np.testing.assert_allclose(approx, in_data, atol=1e-6)
    assert np.abs(approx - exact).mean() < tolerance


def test_model_input_size_follows_variant():
  config = defaults.get_config()
  assert augment.model_input_size(config) == 224
  config.model.variant = 'caffe'
  assert augment.model_input_size(config) == 227
  config.model.input_size = 112
  assert augment.model_input_size(config) == 112


# ---------------------------------------------------------------------------
# Host and device together: the host's uint8 share, then the device's float
# work, against a plain NumPy reference.


@pytest.fixture(scope='module')
def base_folder(tmp_path_factory):
  """PNGs already RESIZE x RESIZE (the resize is then the identity)."""
  rng = np.random.default_rng(5)
  pixels = {c: [rng.integers(0, 256, (RESIZE, RESIZE, 3), np.uint8)
                for _ in range(n)] for c, n in (('p', 3), ('q', 5))}
  files = {c: [_encode(Image.fromarray(p), 'PNG') for p in images]
           for c, images in pixels.items()}
  dataset = _write_folder(tmp_path_factory.mktemp('base'), files)
  return dataset, [(p, label) for label, c in enumerate(sorted(pixels))
                   for p in pixels[c]]


def _stats_file(tmp_path, rng) -> str:
  path = str(tmp_path / 'stats.npz')
  eigvec, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  np.savez(path, mean_rgb=np.array([0.4, 0.5, 0.6], np.float32),
           mean_image=rng.uniform(0.2, 0.8, (RESIZE, RESIZE, 3)).astype(
               np.float32),
           eigval=np.array([0.3, 0.02, 0.005], np.float32),
           eigvec=eigvec.astype(np.float32))
  return path


CONVENTIONS = {
    'channel_mean': {},
    'pixel_mean_std_stddev': {'input.mean_subtraction': 'pixel',
                              'input.std_rgb': (0.2, 0.25, 0.3),
                              'input.pca_convention': 'stddev',
                              'input.pca_lighting_sigma': 0.5},
    'caffe_bgr_255_centre': {'input.channel_order': 'BGR',
                             'input.value_scale': 255.0,
                             'input.mean_rgb': (0.48, 0.46, 0.41),
                             'input.random_crop': False,
                             'input.pca_lighting_sigma': 0.0},
}


def _reference(base, where, lighting, config, stats):
  """Crop, + lighting, - mean, / std, * scale, flip, BGR, in plain NumPy."""
  y, x, flipped = where
  inp = config.input
  image = base[y:y + CROP, x:x + CROP].astype(np.float64) / 255 + lighting
  if inp.mean_subtraction == 'pixel':
    image -= stats['mean_image'][y:y + CROP, x:x + CROP]
  else:
    image -= (stats['mean_rgb'] if inp.get('stats_file') else
              np.array(inp.mean_rgb))
  if inp.std_rgb is not None:
    image /= np.array(inp.std_rgb)
  image *= inp.value_scale
  if flipped:
    image = image[:, ::-1]
  return image[..., ::-1] if inp.channel_order == 'BGR' else image


@pytest.mark.parametrize('name', sorted(CONVENTIONS))
def test_host_and_device_match_numpy(base_folder, tmp_path, name):
  dataset, originals = base_folder
  overrides = dict(CONVENTIONS[name], batch_size=len(originals))
  if name.startswith('pixel'):
    overrides['input.stats_file'] = _stats_file(tmp_path,
                                                np.random.default_rng(6))
  config = _config(dataset, **overrides)
  stats = dict(np.load(config.input.stats_file)) if (
      config.input.stats_file) else {}
  batch = next(iterators.create_train_iterator(config))
  images = jax.jit(lambda b: device.train_images(
      b, device.Normalization.from_config(config)))(batch)
  for row in range(len(originals)):
    where = batch['crop'][row]
    y, x, flipped = where
    # The host sends exactly the uint8 crop of one base image, flipped or
    # not, and where it lies.
    windows = [(base[y:y + CROP, x:x + CROP], label)
               for base, label in originals]
    if flipped:
      windows = [(w[:, ::-1], label) for w, label in windows]
    found = [i for i, (w, label) in enumerate(windows)
             if np.array_equal(w, batch['image'][row])]
    assert len(found) == 1
    base, label = originals[found[0]]
    assert batch['label'][row] == label
    if not config.input.random_crop:
      assert (y, x) == ((RESIZE - CROP) // 2,) * 2
    lighting = batch['lighting'][row]
    assert (np.any(lighting != 0) == (config.input.pca_lighting_sigma > 0))
    np.testing.assert_allclose(
        images[row], _reference(base, where, lighting, config, stats),
        rtol=1e-5, atol=1e-5 * config.input.value_scale)
  assert 0 < batch['crop'][:, 2].sum() < len(originals)  # Both flips seen.


def test_eval_sends_the_uint8_base_image(base_folder):
  dataset, originals = base_folder
  _, batches = _eval_all(_config(dataset, eval_batch_size=3))
  sent = [(image, label) for b in batches
          for image, label, real in zip(b['image'], b['label'], b['mask'])
          if real]
  assert len(sent) == len(originals)
  for image, label in sent:
    assert image.dtype == np.uint8
    assert sum(np.array_equal(image, base) and label == want
               for base, want in originals) == 1


def _draws(config, *, seed=0, epoch=0, index=0):
  """(crop, lighting) the host draws for one record."""
  record = {'encoded': tf.constant(_encode(
      Image.fromarray(np.zeros((RESIZE, RESIZE, 3), np.uint8)), 'PNG')),
            'label': tf.constant(0), 'index': tf.constant(index, tf.int64)}
  out = augment.make_train_preprocess(config, seed=seed, epoch=epoch)(record)
  return out['crop'].numpy(), out['lighting'].numpy()


def test_draws_are_keyed_by_seed_epoch_and_index():
  config = _config('synthetic')
  key = dict(seed=3, epoch=2, index=17)
  crop, lighting = _draws(config, **key)
  again = _draws(config, **key)
  np.testing.assert_array_equal(crop, again[0])
  np.testing.assert_array_equal(lighting, again[1])
  for field in key:
    other = _draws(config, **dict(key, **{field: key[field] + 1}))
    assert not np.array_equal(lighting, other[1]), field
  # Over many indices: every offset of the valid range, both flips.
  crops = np.stack([_draws(config, index=i)[0] for i in range(300)])
  assert set(crops[:, 0]) == set(crops[:, 1]) == set(range(RESIZE - CROP + 1))
  assert 110 < crops[:, 2].sum() < 190


# ---------------------------------------------------------------------------
# Whole pipeline.


def _fingerprints(images, labels):
  """Sorted (label, image sum) pairs: a multiset of examples."""
  pairs = sorted(zip(labels.tolist(), images.reshape(len(labels), -1)
                     .sum(1).round(3).tolist()))
  return np.array(pairs)


def _eval_all(config, *, process_index=0, process_count=1):
  iterable = iterators.create_eval_iterator(config, process_index=process_index,
                                     process_count=process_count)
  batches = list(iterable)
  return iterable, batches


def test_messy_folder_train_and_eval_skip_exactly_the_bad_files(messy_folder):
  dataset, num_good, num_bad = messy_folder
  config = _no_augmentation(_config(dataset, batch_size=1, eval_batch_size=4))
  assert sources.num_train_examples(config) == num_good + num_bad
  assert sources.num_classes(config) == 2

  evaluation, batches = _eval_all(config)
  assert evaluation.num_examples == num_good
  assert evaluation.num_skipped == num_bad
  masks = np.concatenate([b['mask'] for b in batches])
  images = np.concatenate([b['image'] for b in batches])[masks]
  labels = np.concatenate([b['label'] for b in batches])[masks]
  assert images.dtype == np.uint8 and images.shape[1:] == (RESIZE, RESIZE, 3)
  assert all(b['image'].shape == (4, RESIZE, RESIZE, 3) for b in batches)
  mid = (RESIZE - CROP) // 2
  centre = images[:, mid:mid + CROP, mid:mid + CROP]

  train = iterators.create_train_iterator(config)
  epoch0 = [next(train) for _ in range(num_good + num_bad)]
  assert train.get_state() == {'epoch': 1, 'next_index': 0,
                               'num_skipped': num_bad}
  # Without augmentation the training crops are the evaluation crops:
  # every good file, and in the bad ones' places good ones again.
  trained = _fingerprints(np.concatenate([b['image'] for b in epoch0]),
                          np.concatenate([b['label'] for b in epoch0]))
  good = _fingerprints(centre, labels)
  assert len(trained) == num_good + num_bad
  assert {tuple(row) for row in np.round(trained, 2)} == {
      tuple(row) for row in np.round(good, 2)}
  for _ in range(num_good + num_bad):
    next(train)
  assert train.get_state()['epoch'] == 2
  # The same bad files in every epoch count once.
  assert train.num_skipped == num_bad


def test_eval_sees_every_example_once(clean_folder):
  config = _config(clean_folder, eval_batch_size=4)
  single, batches = _eval_all(config)
  assert single.num_examples == 7 and single.num_skipped == 0
  assert len(batches) == 2
  assert [int(b['mask'].sum()) for b in batches] == [4, 3]
  assert all(len(b['label']) == 4 for b in batches)
  expected = _fingerprints(
      np.concatenate([b['image'][b['mask']] for b in batches]),
      np.concatenate([b['label'][b['mask']] for b in batches]))

  runs = [_eval_all(config, process_index=p, process_count=2)
          for p in range(2)]
  assert len(runs[0][1]) == len(runs[1][1])
  assert sum(r.num_examples for r, _ in runs) == 7
  local = [b for _, batches in runs for b in batches]
  assert all(len(b['label']) == 2 for b in local)
  union = _fingerprints(
      np.concatenate([b['image'][b['mask']] for b in local]),
      np.concatenate([b['label'][b['mask']] for b in local]))
  np.testing.assert_allclose(union, expected)


def test_train_shards_are_disjoint_and_cover_the_epoch(clean_folder):
  config = _no_augmentation(_config(clean_folder, batch_size=2))
  shards = []
  for p in range(2):
    iterator = iterators.create_train_iterator(config, process_index=p,
                                        process_count=2)
    batches = [next(iterator) for _ in range(5)]  # 10 files / 2 processes.
    assert iterator.get_state() == {'epoch': 1, 'next_index': 0,
                                    'num_skipped': 0}
    shards += batches
  batch = next(iterators.create_train_iterator(
      _no_augmentation(_config(clean_folder, batch_size=10))))
  np.testing.assert_allclose(
      _fingerprints(np.concatenate([b['image'] for b in shards]),
                    np.concatenate([b['label'] for b in shards])),
      _fingerprints(batch['image'], batch['label']))


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y) == {'image', 'lighting', 'crop', 'label'}
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_same_seed_same_batches_other_seed_other_batches(clean_folder):
  config = _config(clean_folder)
  create = iterators.create_train_iterator
  _assert_same_batches(_take(create(config), 4), _take(create(config), 4))
  other = _take(create(_config(clean_folder, seed=1)), 1)
  assert not np.array_equal(other[0]['image'],
                            _take(create(config), 1)[0]['image'])


def test_epochs_differ_in_order_and_augmentation(clean_folder):
  iterator = iterators.create_train_iterator(
      _config(clean_folder, batch_size=10))
  first, second = next(iterator), next(iterator)
  assert sorted(first['label']) == sorted(second['label'])
  assert not np.allclose(np.sort(first['image'].sum((1, 2, 3))),
                         np.sort(second['image'].sum((1, 2, 3))))


@pytest.mark.parametrize('k', [1, 4])
def test_restored_iterator_continues_exactly(messy_folder, k):
  dataset, _, num_bad = messy_folder
  config = _config(dataset, batch_size=4)  # 9 good files: batches span epochs.
  uninterrupted = iterators.create_train_iterator(config)
  _take(uninterrupted, k)
  state = uninterrupted.get_state()
  expected = _take(uninterrupted, 4)

  resumed = iterators.create_train_iterator(config)
  resumed.set_state(dict(state))
  assert resumed.num_skipped == state['num_skipped']
  _assert_same_batches(_take(resumed, 4), expected)
  assert resumed.get_state() == uninterrupted.get_state()
  assert resumed.num_skipped == uninterrupted.num_skipped
  if k == 4:  # 16 good examples read: past the first epoch's bad files.
    assert state['epoch'] == 1 and state['num_skipped'] >= num_bad


def test_missing_imagenet_names_the_files_and_directory(tmp_path):
  config = _config('imagenet2012', data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    iterators.create_train_iterator(config)
  message = str(error.value)
  manual_dir = os.path.join(str(tmp_path), 'downloads', 'manual')
  for name in ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar',
               manual_dir):
    assert name in message


def test_synthetic_dataset_is_read_through_folder_path(tmp_path):
  config = _config('synthetic', **{'synthetic.num_classes': 3,
                                   'synthetic.train_per_class': 4,
                                   'synthetic.val_per_class': 2,
                                   'synthetic.cache_dir': str(tmp_path)})
  assert sources.num_classes(config) == 3
  assert sources.num_train_examples(config) == 12
  batch = next(iterators.create_train_iterator(config))
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      'image': ((4, CROP, CROP, 3), np.uint8),
      'lighting': ((4, 3), np.float32),
      'crop': ((4, 3), np.int32),
      'label': ((4,), np.int32)}
  evaluation, _ = _eval_all(config)
  assert evaluation.num_examples == 6


def test_to_global_and_prefetch_keep_the_state_of_each_batch(clean_folder):
  config = _config(clean_folder)
  mesh = jax.make_mesh((1,), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      'data'))
  shardings = {k: sharding for k in ('image', 'lighting', 'crop', 'label')}
  reference = iterators.create_train_iterator(config)
  expected = []
  for _ in range(3):
    expected.append((next(reference), reference.get_state()))
  prefetched = iterators.prefetch_to_device(
      iterators.create_train_iterator(config), 2, shardings)
  for want_batch, want_state in expected:
    global_batch, state, num_skipped = next(prefetched)
    assert isinstance(global_batch['image'], jax.Array)
    for key, want in want_batch.items():
      np.testing.assert_array_equal(np.asarray(global_batch[key]), want)
    assert state == want_state
    assert num_skipped == want_state['num_skipped']
  prefetched.close()
