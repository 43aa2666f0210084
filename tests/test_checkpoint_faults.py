"""A damaged checkpoint or a full disk: the run goes on, or stops in a line."""

import errno
import gc
import glob
import logging
import os
import shutil
import subprocess

from etils import epath
import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint
from alexnet_jax import storage
from alexnet_jax import train

from test_train import _final_params
from test_train import _main_cmd
from test_train import _subprocess_overrides
from test_train import REPO

pytestmark = pytest.mark.slow

STEPS = 6  # Checkpoints at 2, 4 and 6.


def _config(factory, steps=STEPS):
  return factory(num_train_steps=steps, checkpoint_every_steps=2,
                 eval_every_steps=STEPS)


@pytest.fixture(scope='module')
def uninterrupted(tiny_config_factory, tmp_path_factory):
  """(final params, final metrics) of a run that nothing interrupted."""
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  metrics = train.train_and_evaluate(_config(tiny_config_factory), workdir)
  return _final_params(_config(tiny_config_factory), workdir)[1], metrics


@pytest.fixture(scope='module')
def trained_to_4(tiny_config_factory, tmp_path_factory):
  """A workdir with the checkpoints of 4 steps (2 and 4), to copy."""
  workdir = str(tmp_path_factory.mktemp('trained_to_4'))
  train.train_and_evaluate(_config(tiny_config_factory, steps=4), workdir)
  return workdir


def _copy(workdir, tmp_path):
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)


def _assert_same_run(config, workdir, metrics, uninterrupted):
  step, params = _final_params(config, workdir)
  assert step == STEPS
  for a, b in zip(jax.tree.leaves(params),
                  jax.tree.leaves(uninterrupted[0]), strict=True):
    np.testing.assert_array_equal(a, b)
  assert metrics == uninterrupted[1]


def _overwrite(pattern):
  """Replaces every file matching `pattern` by 100 bytes of noise."""
  files = [f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f)]
  assert files, pattern
  for path in files:
    with open(path, 'wb') as f:
      f.write(np.random.default_rng(0).bytes(100))


def _truncate(pattern):
  """Keeps the first half of each file matching `pattern` (a cut copy)."""
  files = glob.glob(pattern)
  assert files, pattern
  for path in files:
    with open(path, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(data[:len(data) // 2])


DAMAGE = {
    'params': lambda step_dir: _overwrite(f'{step_dir}/params/**/d/*'),
    'opt_state': lambda step_dir: _overwrite(f'{step_dir}/opt_state/**/d/*'),
    'progress': lambda step_dir: _truncate(f'{step_dir}/progress/metadata'),
}


@pytest.mark.parametrize('item', sorted(DAMAGE))
def test_damaged_latest_checkpoint_resumes_from_the_previous_one(
    tiny_config_factory, tmp_path, capsys, uninterrupted, trained_to_4, item):
  _copy(trained_to_4, tmp_path)
  ckpt_dir = tmp_path / 'checkpoints'
  DAMAGE[item](ckpt_dir / '4')
  capsys.readouterr()
  metrics = train.train_and_evaluate(_config(tiny_config_factory),
                                     str(tmp_path))
  warnings = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith('warning:')]
  assert len(warnings) == 1, warnings
  assert f'{ckpt_dir}/4 could not be read ({item}: ' in warnings[0]
  moved = glob.glob(f'{ckpt_dir}/4.damaged-*')
  assert len(moved) == 1 and f'moved to {moved[0]}' in warnings[0]
  assert os.path.isdir(os.path.join(moved[0], item))  # Kept, not deleted.
  _assert_same_run(_config(tiny_config_factory), str(tmp_path), metrics,
                   uninterrupted)


def test_no_readable_checkpoint_is_a_one_line_error(tiny_config_factory,
                                                    tmp_path, trained_to_4):
  config = _config(tiny_config_factory, steps=4)
  _copy(trained_to_4, tmp_path)
  DAMAGE['params'](tmp_path / 'checkpoints' / '4')
  DAMAGE['opt_state'](tmp_path / 'checkpoints' / '2')
  result = subprocess.run(
      _main_cmd(tmp_path, {**_subprocess_overrides(config),
                           'num_train_steps': STEPS,
                           'checkpoint_every_steps': 2}),
      env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
  assert result.returncode == 1
  warnings = [line for line in result.stdout.splitlines()
              if line.startswith('warning:')]
  assert [w.split(' could not')[0] for w in warnings] == [
      f'warning: checkpoint {tmp_path}/checkpoints/4',
      f'warning: checkpoint {tmp_path}/checkpoints/2']
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: no readable checkpoint in {tmp_path}/'
                         'checkpoints: the damaged ones were moved aside')
  for noise in ('Traceback', 'Event loop is closed', 'never retrieved'):
    assert noise not in result.stdout + result.stderr
  # Nothing is lost, and a second try does not silently start afresh.
  assert sorted(os.listdir(tmp_path / 'checkpoints'))[0].startswith(
      '2.damaged-')
  assert len(os.listdir(tmp_path / 'checkpoints')) == 2
  with pytest.raises(checkpoint.CheckpointError, match='no readable'):
    train.train_and_evaluate(config, str(tmp_path))


def test_eval_only_takes_the_newest_readable_checkpoint(
    tiny_config_factory, tmp_path, capsys, trained_to_4):
  config = _config(tiny_config_factory, steps=4)
  _copy(trained_to_4, tmp_path)
  ckpt_dir = tmp_path / 'checkpoints'
  at_2 = train.evaluate_checkpoint(config, str(ckpt_dir / '2'))
  DAMAGE['params'](ckpt_dir / '4')
  with pytest.raises(checkpoint.CheckpointError,
                     match=f'checkpoint {ckpt_dir}/4 could not be read'):
    train.evaluate_checkpoint(config, str(ckpt_dir / '4'))
  assert (ckpt_dir / '4').is_dir()  # A step asked for by name stays put.
  capsys.readouterr()
  assert train.evaluate_checkpoint(config, str(tmp_path)) == at_2
  assert f'{ckpt_dir}/4 could not be read' in capsys.readouterr().out
  DAMAGE['params'](ckpt_dir / '2')
  with pytest.raises(checkpoint.CheckpointError, match='no readable'):
    train.evaluate_checkpoint(config, str(tmp_path))


def test_a_changed_model_is_refused_not_moved_aside(tiny_config_factory,
                                                    tmp_path, trained_to_4):
  _copy(trained_to_4, tmp_path)
  other = _config(tiny_config_factory)
  other.model.input_size = 99  # Same layer widths, other fc6 shape.
  other.input.resize_size = 112
  with pytest.raises(ValueError, match=r'parameter .*fc6.* has shape'):
    train.train_and_evaluate(other, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']


def test_an_evaluation_checkpoint_is_refused_not_moved_aside(
    tiny_config_factory, tmp_path, trained_to_4):
  config = _config(tiny_config_factory)
  source = checkpoint.manager(os.path.join(trained_to_4, 'checkpoints'))
  step, params = _final_params(config, trained_to_4)
  mngr = checkpoint.manager(str(tmp_path / 'checkpoints'))
  checkpoint.save(mngr, 0, params=params,
                  meta=checkpoint.read_meta(source, step))
  checkpoint.wait_until_finished(mngr)
  with pytest.raises(ValueError, match='holds parameters only'):
    train.train_and_evaluate(config, str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints') == ['0']


@pytest.fixture
def small_disk(tmp_path):
  """A `checkpoints` directory on a 800 KiB tmpfs: one tiny step fits.

  Falls back to reporting that little free space when mounting is not
  permitted here (it needs root), except where ALEXNET_JAX_REQUIRE_TMPFS=1
  says a real full disk is expected (`.ci/run` as root sets it): there the
  test fails instead.
  """
  mount_point = tmp_path / 'checkpoints'
  mount_point.mkdir()
  mount = subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=800k', 'tmpfs', str(mount_point)],
      capture_output=True, text=True, check=False)
  mounted = mount.returncode == 0
  if not mounted and os.environ.get('ALEXNET_JAX_REQUIRE_TMPFS'):
    pytest.fail('ALEXNET_JAX_REQUIRE_TMPFS is set but a tmpfs could not be '
                f'mounted: {mount.stderr.strip()}')
  yield mounted
  if mounted:
    subprocess.run(['umount', str(mount_point)], check=True)


def _report_free(monkeypatch, free_bytes):
  """Makes the free space that `checkpoint` sees `free_bytes()`."""
  real = storage.shutil.disk_usage

  def disk_usage(path):
    return real(path)._replace(free=free_bytes())

  monkeypatch.setattr(storage.shutil, 'disk_usage', disk_usage)


def test_full_disk_stops_keeps_the_last_checkpoint_and_resumes_exactly(
    tiny_config_factory, tmp_path, monkeypatch, small_disk, uninterrupted):
  config = _config(tiny_config_factory)
  ckpt_dir = tmp_path / 'checkpoints'
  if not small_disk:  # Step 2 fits; step 4 does not.
    _report_free(monkeypatch, lambda: 0 if (ckpt_dir / '2').exists()
                 else 2**40)
  with pytest.raises(checkpoint.CheckpointError,
                     match=f'^no space left in {ckpt_dir} to save step 4: it '
                     r'needs \d+\.\d+ MiB, \d+\.\d+ MiB free; step 2 stays '
                     'the latest checkpoint'):
    train.train_and_evaluate(config, str(tmp_path))
  assert os.listdir(ckpt_dir) == ['2']
  if small_disk:
    subprocess.run(['mount', '-o', 'remount,size=8m', str(ckpt_dir)],
                   check=True)
  else:
    monkeypatch.undo()
  metrics = train.train_and_evaluate(config, str(tmp_path))
  _assert_same_run(config, str(tmp_path), metrics, uninterrupted)


def test_disk_full_during_a_background_save(tiny_config_factory, tmp_path,
                                            monkeypatch, caplog, small_disk,
                                            uninterrupted):
  config = _config(tiny_config_factory)
  ckpt_dir = tmp_path / 'checkpoints'
  _report_free(monkeypatch, lambda: 2**40)  # The check passes; writes fail.
  if not small_disk:
    _fail_checkpoint_writes_after_step(monkeypatch, 2)
  with pytest.raises(checkpoint.CheckpointError,
                     match=f'^no space left in {ckpt_dir} to save step 4: '
                     '.*; step 2 stays the latest checkpoint'):
    train.train_and_evaluate(config, str(tmp_path))
  gc.collect()  # asyncio reports failed write tasks as they are collected.
  tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
  assert not tracebacks
  assert os.listdir(ckpt_dir) == ['2']  # No partial step 4 left behind.
  monkeypatch.undo()
  if small_disk:
    subprocess.run(['mount', '-o', 'remount,size=8m', str(ckpt_dir)],
                   check=True)
  metrics = train.train_and_evaluate(config, str(tmp_path))
  _assert_same_run(config, str(tmp_path), metrics, uninterrupted)


def _fail_checkpoint_writes_after_step(monkeypatch, step):
  """ENOSPC from orbax's background writes of steps after `step`."""
  real = epath.gpath.PosixGPath.write_text

  def write_text(path, *args, **kwargs):
    if ('.orbax-checkpoint-tmp' in str(path)
        and f'/{step}.orbax-checkpoint-tmp' not in str(path)):
      raise OSError(errno.ENOSPC, 'No space left on device', str(path))
    return real(path, *args, **kwargs)

  monkeypatch.setattr(epath.gpath.PosixGPath, 'write_text', write_text)


def test_late_reports_of_a_failed_read_are_dropped_and_others_kept():
  def fail():
    raise ValueError('OUT_OF_RANGE: reading past the end')
  result, why = checkpoint._attempt(fail)
  assert result is None and 'OUT_OF_RANGE' in why
  # Reads still in flight fail later; asyncio reports them after _attempt.
  log = logging.getLogger('asyncio')
  record = lambda message: log.makeRecord('asyncio', logging.ERROR, __file__,
                                          1, message, (), None)
  assert not log.filter(record('Task exception was never retrieved'))
  assert log.filter(record('Executing <Task> took 0.2 seconds'))
