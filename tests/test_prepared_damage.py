"""A damaged prepared shard: named by training, evaluation and --verify,
rewritten by --verify from the source, and training then completes."""

import os
import shutil
import subprocess
import sys

import pytest

from alexnet_jax import train
from alexnet_jax.data import iterators
from alexnet_jax.data import prepare
from alexnet_jax.data import synthetic

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SHARD = 'train-00001-of-00003.tfrecord'
VAL_SHARD = 'val-00000-of-00002.tfrecord'


@pytest.fixture(scope='module')
def source(tiny_config_factory, tmp_path_factory):
  """A folder dataset of its own (a test takes it away): the tiny synthetic
  images, 48 training and 20 validation."""
  root = str(tmp_path_factory.mktemp('source') / 'images')
  shutil.copytree(synthetic.generate_from_config(tiny_config_factory()), root)
  return f'folder:{root}'


@pytest.fixture(scope='module')
def pristine(tiny_config_factory, source, tmp_path_factory):
  """A prepared directory of 3 training and 2 validation shards."""
  out = str(tmp_path_factory.mktemp('pristine'))
  prepare.prepare(tiny_config_factory(dataset=source), out,
                  examples_per_shard=16, workers=1)
  return out


@pytest.fixture
def prepared(pristine, tmp_path):
  """A copy of the pristine directory to damage."""
  out = str(tmp_path / 'prepared')
  shutil.copytree(pristine, out)
  return out


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
  monkeypatch.setattr(iterators.TrainIterator, 'retry_delay_s', 0.0)


def _read(path) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def _flip(path) -> None:
  data = bytearray(_read(path))
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
  with open(path, 'wb') as f:
    f.write(data)


def _truncate(path) -> None:
  data = _read(path)
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])


DAMAGE = {'flipped': (_flip, 'corrupted record at'),
          'truncated': (_truncate, 'bytes, not the'),
          'missing': (os.remove, 'missing')}


def _train_config(factory, out):
  # One epoch (48 images), so every shard is read; the same programs as
  # test_checkpoint_faults.
  return factory(dataset=f'prepared:{out}', num_train_steps=6,
                 checkpoint_every_steps=2, eval_every_steps=6)


def _modified_times(out):
  return {f: os.stat(os.path.join(out, f)).st_mtime_ns
          for f in os.listdir(out) if f.endswith('.tfrecord')}


@pytest.mark.parametrize('damage', DAMAGE)
def test_damaged_shard_is_named_repaired_and_training_completes(
    tiny_config_factory, source, pristine, prepared, tmp_path, capsys,
    damage):
  damage_file, reason = DAMAGE[damage]
  shard = os.path.join(prepared, TRAIN_SHARD)
  damage_file(shard)
  config = _train_config(tiny_config_factory, prepared)
  with pytest.raises(iterators.DamagedDataError) as error:
    train.train_and_evaluate(config, str(tmp_path / 'failed'))
  message = str(error.value)
  assert message.startswith(f'{shard}: ') and reason in message
  assert f'--out={prepared} --verify' in message and '\n' not in message

  untouched = {f: t for f, t in _modified_times(prepared).items()
               if f != TRAIN_SHARD}
  capsys.readouterr()
  found = prepare.verify(tiny_config_factory(dataset=source), prepared,
                         workers=1)
  assert found.damaged == found.rewritten == [shard]
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].startswith(f'damaged {shard}: ') and reason in printed[0]
  assert f'rewrote {shard}' in printed
  assert _read(shard) == _read(os.path.join(pristine, TRAIN_SHARD))
  assert {f: t for f, t in _modified_times(prepared).items()
          if f != TRAIN_SHARD} == untouched
  assert prepare.verify(tiny_config_factory(dataset=source), prepared,
                        workers=1).damaged == []

  metrics = train.train_and_evaluate(config, str(tmp_path / 'repaired'))
  assert metrics['eval/num_examples'] == 20


def test_damaged_eval_shard_stops_evaluation_with_its_name(
    tiny_config_factory, prepared):
  shard = os.path.join(prepared, VAL_SHARD)
  _flip(shard)
  evaluation = iterators.create_eval_iterator(
      tiny_config_factory(dataset=f'prepared:{prepared}'))
  with pytest.raises(iterators.DamagedDataError,
                     match=f'^{shard}: corrupted record at .* --verify'):
    list(evaluation)


def test_swapped_shards_are_told_apart_by_their_checksums(
    tiny_config_factory, source, pristine, prepared):
  first, second = (os.path.join(prepared, f'train-0000{i}-of-00003.tfrecord')
                   for i in (0, 1))
  os.rename(first, first + '.tmp')
  os.rename(second, first)
  os.rename(first + '.tmp', second)
  found = prepare.verify(tiny_config_factory(dataset=source), prepared,
                         workers=1)
  assert found.damaged == found.rewritten == [first, second]
  for path in (first, second):
    assert _read(path) == _read(os.path.join(pristine,
                                             os.path.basename(path)))


def _verify_cli(config_source, out):
  return subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.prepare',
       f'--config={REPO}/configs/demo.py', f'--out={out}', '--verify',
       f'--config.dataset={config_source}', '--config.input.resize_size=76',
       '--workers=1'],
      cwd=REPO, capture_output=True, text=True, check=False)


def test_verify_cli_only_reports_without_the_source(source, prepared):
  shard = os.path.join(prepared, TRAIN_SHARD)
  _flip(shard)
  root = source[len('folder:'):]
  os.rename(root, root + '.away')
  try:
    away = _verify_cli(source, prepared)
  finally:
    os.rename(root + '.away', root)
  lines = away.stdout.splitlines()
  assert away.returncode == 1, away.stderr
  assert lines[0].startswith(f'damaged {shard}: corrupted record at')
  assert lines[1].startswith('verify: not rewriting: folder dataset')
  assert lines[-1] == 'damaged_shards 1'

  repaired = _verify_cli(source, prepared)
  assert repaired.returncode == 0, repaired.stderr
  assert repaired.stdout.splitlines()[-2:] == [f'rewrote {shard}',
                                               'damaged_shards 1']
  again = _verify_cli(source, prepared)
  assert (again.returncode, again.stdout.splitlines()) == (
      0, ['damaged_shards 0'])
