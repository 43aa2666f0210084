"""What a real ImageNet run hits: layouts, bad files, unreadable files."""

import functools
import io
import os

import numpy as np
from PIL import Image
import pytest

from alexnet_jax.data import iterators
from alexnet_jax.data import sources

from data_config import small_data_config

_config = functools.partial(small_data_config, batch_size=2)


def _jpeg(rng, height=50, width=60) -> bytes:
  pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'JPEG')
  return buffer.getvalue()


def _write(path, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def _train_folder(root, rng, files_per_class=3):
  for name in ('cat', 'dog'):
    for i in range(files_per_class):
      _write(os.path.join(root, 'train', name, f'{i}.JPEG'), _jpeg(rng))


def test_flat_val_folder_is_a_one_line_error(tmp_path):
  rng = np.random.default_rng(0)
  _train_folder(tmp_path, rng)
  for i in range(3):  # How ILSVRC2012_img_val.tar extracts.
    _write(os.path.join(tmp_path, 'val', f'ILSVRC2012_val_{i:08d}.JPEG'),
           _jpeg(rng))
  with pytest.raises(ValueError) as error:
    sources.num_classes(_config(f'folder:{tmp_path}'))
  message = str(error.value)
  assert "split 'val'" in message and '<class>' in message
  assert '3 images directly in it but no class folders' in message
  assert '\n' not in message


def test_val_folder_without_images_is_an_error(tmp_path):
  _train_folder(tmp_path, np.random.default_rng(0))
  os.makedirs(os.path.join(tmp_path, 'val', 'cat'))
  with pytest.raises(ValueError, match="split 'val'.*no images"):
    iterators.create_eval_iterator(_config(f'folder:{tmp_path}'))


def _folder_with_bad_files(tmp_path, extra=True):
  """9 (8 without `extra`) good and 3 undecodable training files."""
  rng = np.random.default_rng(1)
  _train_folder(tmp_path, rng, files_per_class=4)
  good = _jpeg(rng)
  for name, data in (('cat/bad0.JPEG', good[:len(good) // 2]),
                     ('dog/bad1.JPEG', b''), ('dog/bad2.JPEG', b'text' * 9)
                     ) + ((('dog/extra.JPEG', good),) if extra else ()):
    _write(os.path.join(tmp_path, 'train', name), data)
  _write(os.path.join(tmp_path, 'val', 'cat', '0.JPEG'), good)
  return f'folder:{tmp_path}'


@pytest.fixture
def folder_with_bad_files(tmp_path):
  return _folder_with_bad_files(tmp_path)


# 11 files on 2 processes: each epoch leaves one file unread; with seed 15
# epoch 0 leaves out a bad one (dog/bad1), which epoch 1 reads.
@pytest.mark.parametrize('process_count, extra, seed', [(1, True, 0),
                                                        (2, True, 0),
                                                        (2, False, 15)])
def test_skipped_files_are_counted_once_over_epochs(tmp_path, process_count,
                                                    extra, seed):
  dataset = _folder_with_bad_files(tmp_path, extra)
  config = _config(dataset, batch_size=2 * process_count, seed=seed)
  readers = [iterators.create_train_iterator(config, process_index=p,
                                      process_count=process_count)
               for p in range(process_count)]
  for iterator in readers:
    for _ in range(20 // process_count):  # 4 epochs or more.
      next(iterator)
    assert iterator.get_state()['epoch'] >= 3
  # The same 3 files fail in every epoch: 3, not 3 per epoch.
  assert sum(it.num_skipped for it in readers) == 3

  resumed = iterators.create_train_iterator(config, process_index=0,
                                     process_count=process_count)
  resumed.set_state(readers[0].get_state())
  for _ in range(4):
    next(resumed)
  assert resumed.num_skipped == readers[0].num_skipped


def test_unreadable_file_stops_with_a_clear_error_not_a_skip(
    folder_with_bad_files):
  config = _config(folder_with_bad_files, batch_size=12)
  iterator = iterators.create_train_iterator(config)
  iterator.retry_delay_s = 0.0
  root = folder_with_bad_files[len('folder:'):]
  os.remove(os.path.join(root, 'train', 'dog', '2.JPEG'))  # After listing.
  with pytest.raises(iterators.DataReadError) as error:
    next(iterator)
  assert 'failed 3 times' in str(error.value)
  assert '2.JPEG' in str(error.value)
  assert iterator.num_skipped == 0


def test_epoch_without_a_decodable_image_is_an_error(tmp_path):
  for name in ('cat', 'dog'):
    _write(os.path.join(tmp_path, 'train', name, 'x.JPEG'), b'nothing')
    _write(os.path.join(tmp_path, 'val', name, 'x.JPEG'), b'nothing')
  iterator = iterators.create_train_iterator(_config(f'folder:{tmp_path}'))
  with pytest.raises(ValueError, match='no decodable training image'):
    next(iterator)


def test_multi_process_run_does_not_prepare_tfds(tmp_path, monkeypatch):
  monkeypatch.setattr(sources.jax, 'process_count', lambda: 2)
  with pytest.raises(FileNotFoundError) as error:
    sources.num_classes(_config('mnist', data_dir=str(tmp_path)))
  assert 'is not prepared' in str(error.value)
  assert '--tfds_only' in str(error.value)
  assert not list(tmp_path.iterdir())  # Nothing was downloaded.


def test_unreadable_eval_file_is_an_error_not_a_skip(folder_with_bad_files):
  config = _config(folder_with_bad_files)
  evaluation = iterators.create_eval_iterator(config)
  root = folder_with_bad_files[len('folder:'):]
  os.remove(os.path.join(root, 'val', 'cat', '0.JPEG'))  # After listing.
  with pytest.raises(iterators.DataReadError, match='0.JPEG'):
    list(evaluation)
