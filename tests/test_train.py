"""End-to-end training: every mode, SIGTERM, errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint
from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax import train
from alexnet_jax.data import device

import experiment_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ('train/loss', 'train/top1_error', 'train/top5_error',
           'train/learning_rate', 'perf/images_per_sec', 'perf/step_time',
           'perf/data_wait_fraction', 'data/skipped_train',
           'eval/top1_error', 'eval/top5_error', 'eval/top1_error_10crop',
           'eval/top5_error_10crop', 'eval/num_examples', 'data/skipped_eval')
TEN_CROP_METRICS = {'eval/top1_error_10crop', 'eval/top5_error_10crop'}


def _lines(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _final_params(config, workdir):
  spec = parallel.spec_of(config)
  mngr = checkpoint.manager(os.path.join(workdir, 'checkpoints'))
  step = mngr.latest_step()
  # Restored onto one device, whatever mode wrote it.
  one_device = parallel.create_strategy('single', 1, spec, 1)
  restored = checkpoint.restore(
      mngr, step, params_like=parallel.abstract_params(spec, one_device))
  return step, jax.tree.map(np.asarray, restored['params'])


@pytest.fixture(scope='module')
def single_device_run(tiny_config_factory, tmp_path_factory):
  """(workdir, result, final parameters) of the run on one device."""
  config = tiny_config_factory(mode='single', num_devices=1)
  workdir = tmp_path_factory.mktemp('single')
  result = train.train_and_evaluate(config, str(workdir))
  return workdir, result, _final_params(config, str(workdir))[1]


@pytest.mark.slow
@pytest.mark.parametrize('mode,devices', [('single', 1), ('data', 2),
                                          ('tower', 2), ('data_tower', 4),
                                          ('hybrid', 2), ('hybrid_2d', 2)])
def test_main_runs_every_mode_to_the_single_device_parameters(
    tiny_config_factory, tmp_path, single_device_run, mode, devices):
  ten_crop = mode == 'tower'  # Compiling it once is enough.
  config = tiny_config_factory(mode=mode, num_devices=devices,
                               eval_ten_crop=ten_crop)
  if mode == 'single':
    tmp_path, result, _ = single_device_run
  else:
    result = train.train_and_evaluate(config, str(tmp_path))
  lines = _lines(tmp_path)
  names = set().union(*lines)
  assert set(METRICS) - (set() if ten_crop else TEN_CROP_METRICS) <= names
  assert all('step' in line for line in lines)
  assert [line['step'] for line in lines if 'train/loss' in line] == [
      1, 2, 3, 4]
  assert result['eval/num_examples'] == 4 * 5  # Every val image, once.
  assert 0.0 <= result['eval/top1_error'] <= 1.0
  assert checkpoint.manager(str(tmp_path / 'checkpoints')).all_steps() == [
      2, 4]
  # Every mode computes the same function: after 4 steps (augmentation and
  # dropout on), the parameters one device reached, to float32 rounding.
  _, params = _final_params(config, str(tmp_path))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               params, single_device_run[2])


def _wrong_at_k(probs, labels, k):
  top = np.argsort(-probs, axis=-1)[:, :k]
  return ~np.any(top == labels[:, None], axis=-1)


def test_eval_step_gives_both_protocols_from_one_batch(small_spec):
  """Centre crop and 10-crop sums from uint8 base images, against NumPy."""
  resize, size, batch = 76, small_spec.input_size, 8
  strategy = parallel.create_strategy('single', 1, small_spec, batch)
  params = parallel.init_params(small_spec, strategy, jax.random.key(3))
  mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
  norm = device.Normalization(mean.astype(np.float32),
                              std.astype(np.float32), 1.0, False)
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (batch, resize, resize, 3), np.uint8)
  # The reference: NumPy crops of the normalised base images.
  base = ((images / 255.0 - mean) / std).astype(np.float32)
  far, mid = resize - size, (resize - size) // 2
  corners = [base[:, y:y + size, x:x + size]
             for y, x in ((0, 0), (0, far), (far, 0), (far, far), (mid, mid))]
  apply = jax.jit(parallel.make_apply(small_spec, strategy, params,
                                      train=False))
  probs = np.stack([jax.nn.softmax(apply(params, c, None))
                    for c in corners + [c[:, :, ::-1] for c in corners]])
  centre, ten = probs[4], probs.mean(0)
  # Right under the centre crop for the first half, wrong for the rest;
  # the last two examples are padding.
  labels = np.concatenate([centre[:4].argmax(-1), centre[4:].argmin(-1)])
  mask = np.arange(batch) < 6
  step = steps.make_eval_step(small_spec, strategy, params, norm,
                              ten_crop=True)
  out = step(params, {'image': images, 'label': labels.astype(np.int32),
                      'mask': mask})
  assert float(out['count']) == 6
  assert float(out['top1']) == 2
  for k in (1, 5):
    assert float(out[f'top{k}']) == _wrong_at_k(centre, labels, k)[mask].sum()
    assert float(out[f'top{k}_10crop']) == _wrong_at_k(ten, labels,
                                                        k)[mask].sum()
  centre_only = steps.make_eval_step(small_spec, strategy, params, norm,
                                     ten_crop=False)(
      params, {'image': images, 'label': labels.astype(np.int32),
               'mask': mask})
  assert set(centre_only) == {'top1', 'top5', 'count'}
  for key in centre_only:
    assert float(centre_only[key]) == float(out[key])


@pytest.mark.slow
def test_steps_build_without_tensorflow():
  """The GPU machines have no TensorFlow: only reading data (the loop in
  `train`) may need it; the steps, their benchmark and cost do not."""
  subprocess.run(
      [sys.executable, '-c', 'import sys, alexnet_jax.steps, alexnet_jax.aot, '
       'alexnet_jax.tools.benchmark, alexnet_jax.tools.cost, '
       'alexnet_jax.data.device; '
       'assert "tensorflow" not in sys.modules, "tensorflow imported"'],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), check=True)


def _main_cmd(workdir, overrides):
  return [sys.executable, '-m', 'alexnet_jax.main',
          f'--config={REPO}/configs/demo.py', f'--workdir={workdir}',
          *[f'--config.{k}={v}' for k, v in overrides.items()]]


def _subprocess_overrides(config):
  keys = ('synthetic.num_classes', 'synthetic.train_per_class',
          'synthetic.val_per_class', 'synthetic.cache_dir',
          'input.resize_size', 'input.shuffle_buffer', 'model.input_size',
          'model.num_classes', 'batch_size', 'eval_batch_size',
          'log_every_steps')
  out = {}
  for key in keys:
    value = config
    for part in key.split('.'):
      value = value[part]
    out[key] = value
  out['model.conv_features'] = '(8, 16, 24, 24, 16)'
  out['model.fc_features'] = '(32, 32)'
  out['eval_ten_crop'] = False
  return out


def _steps(workdir):
  """Complete checkpoint steps on disk now (orbax skips half-written ones)."""
  return checkpoint.manager(os.path.join(workdir, 'checkpoints')).all_steps()


def _wait_for(predicate, proc, timeout=240):
  start = time.time()
  while not predicate():
    assert proc.poll() is None, proc.communicate()
    assert time.time() - start < timeout
    time.sleep(0.05)


# Resume after SIGKILL, exact: tests/test_prepare.py (local disk, prepared
# shards) and tests/test_gcs.py (a bucket, the synthetic set).


@pytest.mark.slow
def test_sigterm_saves_where_it_stopped(tiny_config_factory, tmp_path):
  base = _subprocess_overrides(tiny_config_factory())
  proc = subprocess.Popen(
      _main_cmd(tmp_path, {**base, 'num_train_steps': 10_000,
                           'checkpoint_every_steps': 10_000,
                           'eval_every_steps': 10_000,
                           'log_every_steps': 1}),
      env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  metrics = tmp_path / 'metrics.jsonl'
  _wait_for(lambda: metrics.exists() and len(
      metrics.read_text().splitlines()) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, output
  stopped = [line for line in output.splitlines() if 'SIGTERM at step' in line]
  assert stopped, output
  step = int(stopped[0].split('SIGTERM at step ')[1].split(':')[0])
  assert _steps(tmp_path) == [step] and 3 <= step < 10_000
  _, params = _final_params(tiny_config_factory(), str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.fixture(scope='module')
def two_good_steps(tiny_config_factory, tmp_path_factory):
  """A run of 2 steps, checkpointed at step 2, and its final parameters."""
  config = tiny_config_factory(num_train_steps=2, eval_every_steps=100)
  workdir = tmp_path_factory.mktemp('good')
  train.train_and_evaluate(config, str(workdir))
  return workdir, _final_params(config, str(workdir))[1]


# Resumed from step 2 at a learning rate that breaks step 3's update. At
# 1e30 the parameters stay finite (float32 reaches 3e38) but step 4's
# forward pass overflows: the loss check stops it. At infinity the
# parameters themselves are not finite after step 3, whose checkpoint
# (every step) refuses them.
@pytest.mark.slow
@pytest.mark.parametrize('learning_rate,every,what,bad_step', [
    (1e30, 2, r'training loss \(nan\)', 4),
    (float('inf'), 1, 'parameters', 3)])
def test_nonfinite_stops_at_its_step_and_keeps_the_last_good_checkpoint(
    tiny_config_factory, tmp_path, two_good_steps, learning_rate, every, what,
    bad_step):
  good, good_params = two_good_steps
  shutil.copytree(good, tmp_path, dirs_exist_ok=True)
  config = tiny_config_factory(num_train_steps=6, eval_every_steps=100,
                               checkpoint_every_steps=every)
  config.optimizer.learning_rate = learning_rate
  with pytest.raises(FloatingPointError, match=(
      rf'^non-finite {what} at step {bad_step}; stopped\. The latest '
      r'checkpoint \(step 2\) holds the last good parameters\.$')):
    train.train_and_evaluate(config, str(tmp_path))
  assert _steps(tmp_path) == [2]
  step, params = _final_params(config, str(tmp_path))
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, params, good_params)
  # metrics.jsonl numbers steps as the message does: every step before the
  # one named logged a finite loss (and step 3's, logged before its save).
  losses = {line['step']: line['train/loss'] for line in _lines(tmp_path)
            if 'train/loss' in line}
  assert sorted(losses) == [1, 2, 3]
  assert all(np.isfinite(list(losses.values())))


@pytest.mark.slow
def test_eval_only_restores_onto_another_mode(tiny_config_factory, tmp_path):
  config = tiny_config_factory(mode='tower', num_devices=2,
                               eval_ten_crop=True)
  trained = train.train_and_evaluate(config, str(tmp_path / 'run'))
  other = tiny_config_factory(mode='data', num_devices=4, eval_ten_crop=True)
  result = train.evaluate_checkpoint(other, str(tmp_path / 'run'))
  for key in ('eval/top1_error', 'eval/top5_error', 'eval/top1_error_10crop'):
    assert result[key] == pytest.approx(trained[key], abs=1e-6)


@pytest.mark.slow
def test_eval_only_from_the_command_line(tiny_config_factory, tmp_path,
                                        two_good_steps):
  """`main --eval_only --checkpoint=STEP_DIR` on another mode gives the
  evaluation the training run logged at that step, and logs it."""
  good, _ = two_good_steps
  trained = [line for line in _lines(good) if 'eval/top1_error' in line]
  assert [line['step'] for line in trained] == [2]
  config = tiny_config_factory(mode='data', num_devices=2)
  step_dir = good / 'checkpoints' / '2'
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main',
       f'--config={REPO}/configs/demo.py', '--eval_only',
       f'--checkpoint={step_dir}', f'--workdir={tmp_path}',
       *experiment_config.overrides(config)],
      env=experiment_config.subprocess_env(), capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  last = result.stdout.strip().splitlines()[-1]
  assert last.startswith(f'checkpoint {good}/checkpoints/2: '), last
  logged, = _lines(tmp_path)
  assert logged['step'] == 2
  for key in ('eval/top1_error', 'eval/top5_error', 'eval/num_examples'):
    assert logged[key] == pytest.approx(trained[0][key], abs=1e-6), key
    assert f'{key} {logged[key]}' in last


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused(tiny_config_factory, tmp_path):
  train.train_and_evaluate(tiny_config_factory(num_train_steps=2,
                                               eval_ten_crop=False),
                           str(tmp_path))
  wider = tiny_config_factory(eval_ten_crop=False)
  wider.model.fc_features = (64, 64)
  with pytest.raises(ValueError, match=r'config\.model\.fc_features'):
    train.train_and_evaluate(wider, str(tmp_path))
  with pytest.raises(ValueError, match=r'config\.model\.fc_features'):
    train.evaluate_checkpoint(wider, str(tmp_path))


def test_unwritable_workdir_is_a_clear_error(tiny_config_factory, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(ValueError, match='--workdir'):
    train.train_and_evaluate(tiny_config_factory(), str(blocker / 'run'))


def test_missing_dataset_is_a_clear_error(tiny_config_factory, tmp_path):
  config = tiny_config_factory(dataset=f'folder:{tmp_path}/nowhere')
  with pytest.raises((ValueError, FileNotFoundError), match='nowhere'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


@pytest.mark.slow
def test_unknown_config_key_fails_at_startup(tmp_path):
  result = subprocess.run(
      _main_cmd(tmp_path, {'batch_sise': 3}),
      env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
  assert result.returncode != 0
  assert 'batch_sise' in result.stderr
