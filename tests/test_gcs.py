"""Runs whose workdir and data live in a bucket, against a real GCS emulator.

The emulator (`gcs_emulator`, started by the `gcs` fixture) is reached by
environment variables alone: the code under test takes its real gs://
paths, through TensorFlow's GCS client, tensorstore and
google-cloud-storage.
"""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from alexnet_jax import checkpoint
from alexnet_jax import logs
from alexnet_jax import storage
from alexnet_jax import train
from alexnet_jax.analysis import trace
from alexnet_jax.data import iterators
from alexnet_jax.data import prepare
from alexnet_jax.data import sources
from alexnet_jax.tools import check_storage
from alexnet_jax.tools import report

import experiment_config
import test_multiprocess
import test_preemption
import test_train

REPO = os.path.dirname(experiment_config.CONFIGS)

pytestmark = pytest.mark.slow  # Every test starts the emulator or trains.


def _assert_equal_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _main(workdir, config, cwd, env):
  return subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main',
       f'--config={REPO}/configs/demo.py', f'--workdir={workdir}',
       *experiment_config.overrides(config)],
      cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _complete_steps(workdir):
  return checkpoint.manager(storage.join(workdir, 'checkpoints')).all_steps()


def test_demo_trains_into_a_bucket_and_resumes_exactly_after_sigkill(
    gcs, tiny_config_factory, tmp_path):
  workdir = gcs.url('killed')
  env = {**experiment_config.subprocess_env(), **gcs.env}
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  endless = tiny_config_factory(num_train_steps=10_000,
                                checkpoint_every_steps=3,
                                eval_every_steps=10_000)
  proc = _main(workdir, endless, cwd, env)
  start = time.time()
  while not _complete_steps(workdir):
    assert proc.poll() is None, proc.communicate()[0]
    assert time.time() - start < 300
    time.sleep(0.2)
  time.sleep(1)  # Some steps past the checkpoint, logged but not saved.
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  target = max(_complete_steps(workdir)) + 4
  finite = tiny_config_factory(num_train_steps=target,
                               checkpoint_every_steps=3,
                               eval_every_steps=target)
  for run in (workdir, gcs.url('straight')):
    done = _main(run, finite, cwd, env)
    output = done.communicate(timeout=300)[0]
    assert done.returncode == 0, output
  assert not list(cwd.iterdir())  # Nothing on local disk.

  step_a, resumed = test_train._final_params(finite, workdir)
  step_b, straight = test_train._final_params(finite, gcs.url('straight'))
  assert step_a == step_b == target
  _assert_equal_params(resumed, straight)
  lines = logs.read_metrics(storage.join(workdir, 'metrics.jsonl'))
  raw = storage.read_text(storage.join(workdir, 'metrics.jsonl'))
  assert len(raw.splitlines()) == len(lines)  # Each step once, as written.
  assert [line['step'] for line in lines if 'train/loss' in line] == list(
      range(1, target + 1))
  assert storage.read_json(storage.join(workdir, 'config.json'))[
      'num_train_steps'] == target
  assert storage.glob(storage.join(workdir, 'tensorboard', 'events.out.*'))
  assert not storage.exists(storage.join(workdir, storage.HOLD_FILE))


@pytest.fixture(scope='module')
def trained_in_bucket(gcs, tiny_config_factory):
  """A 4-step run in the bucket (checkpoints 2 and 4), traced at steps
  2-3, and its config."""
  config = tiny_config_factory()
  config.profile_steps = (1, 3)
  workdir = gcs.url('trained')
  train.train_and_evaluate(config, workdir, on_profiled=trace.profile_hook)
  return workdir, config


def test_a_run_in_a_bucket_writes_what_the_tools_read(trained_in_bucket,
                                                      gcs):
  workdir, _ = trained_in_bucket
  assert storage.exists(storage.join(workdir, 'profile.json'))
  assert storage.glob(storage.join(workdir, 'tensorboard', 'plugins',
                                   'profile', '*', '*.xplane.pb'))
  storage.write_json(storage.join(workdir, 'config.json'),
                     {'mode': 'single', 'num_devices': 1, 'batch_size': 8})
  out = gcs.url('report')
  text = report.write_report([workdir], out)
  assert '| trained | single |' in text
  assert {'README.md', 'images_per_sec.png', 'eval_error_vs_step.png'} <= set(
      storage.listdir(out))
  assert storage.read_bytes(storage.join(out, 'images_per_sec.png'))[
      :4] == b'\x89PNG'


def test_damaged_checkpoint_in_a_bucket_is_moved_aside(
    trained_in_bucket, gcs, tiny_config_factory, capsys):
  source, _ = trained_in_bucket
  config = tiny_config_factory()
  workdir = gcs.url('damaged')
  train.train_and_evaluate(config, workdir)  # Checkpoints 2 and 4.
  step_dir = storage.join(workdir, 'checkpoints', '4', 'params')
  arrays = (storage.glob(storage.join(step_dir, 'd', '*'))
            + storage.glob(storage.join(step_dir, '*', 'd', '*')))
  assert arrays
  for name in arrays:
    storage.write_bytes(name, np.random.default_rng(0).bytes(100))
  capsys.readouterr()
  train.train_and_evaluate(config, workdir)  # Resumes from step 2.
  warnings = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith('warning:')]
  ckpt_dir = storage.join(workdir, 'checkpoints')
  assert len(warnings) == 1 and f'{ckpt_dir}/4 could not be read (params' in (
      warnings[0]), warnings
  moved = storage.glob(storage.join(ckpt_dir, '4.damaged-*'))
  assert len(moved) == 1 and f'moved to {moved[0]}' in warnings[0]
  assert storage.exists(storage.join(moved[0], 'params'))  # Kept.
  _, resumed = test_train._final_params(config, workdir)
  _, straight = test_train._final_params(config, source)
  _assert_equal_params(resumed, straight)


@pytest.mark.multiprocess
def test_two_processes_share_a_bucket_workdir(gcs, tiny_config_factory,
                                              tmp_path):
  """Started apart, stopped by SIGTERM a second apart, then resumed."""
  config = tiny_config_factory(mode='data', num_devices=2,
                               num_train_steps=10_000,
                               checkpoint_every_steps=10_000,
                               eval_every_steps=10_000)
  env = {**experiment_config.subprocess_env(), **gcs.env}
  workdir = gcs.url('two_processes')

  def start(overrides=()):
    return test_preemption._start(config, workdir,
                                  test_multiprocess._free_port(), overrides,
                                  env)

  procs = start()
  metrics = storage.join(workdir, 'metrics.jsonl')
  test_preemption._wait_for(
      lambda: storage.exists(metrics) and len(
          storage.read_text(metrics).splitlines()) >= 3, procs)
  procs[0].send_signal(signal.SIGTERM)
  time.sleep(1)
  procs[1].send_signal(signal.SIGTERM)
  outputs = test_preemption._finish(procs, timeout=180)
  stopped = [line for output in outputs for line in output.splitlines()
             if 'SIGTERM at step' in line]
  assert len(stopped) == 1, outputs
  step = int(stopped[0].split('SIGTERM at step ')[1].split(':')[0])
  assert _complete_steps(workdir) == [step]
  test_preemption._finish(start([f'--config.num_train_steps={step + 2}']),
                          timeout=300)
  assert _complete_steps(workdir) == [step, step + 2]
  lines = logs.read_metrics(metrics)
  assert [line['step'] for line in lines if 'train/loss' in line] == list(
      range(1, step + 3))


def test_prepared_shards_and_folders_in_a_bucket_read_as_locally(
    gcs, tiny_config_factory):
  config = tiny_config_factory()
  folder = sources.from_config(config)  # The synthetic folder, local.
  root = str(folder.train_paths[0]).rsplit('/train/', 1)[0]
  in_bucket = gcs.url('folder')
  storage.copy_tree(root, in_bucket)
  prepared = gcs.url('prepared')
  raw = config.copy_and_resolve_references()
  raw.dataset = f'folder:{in_bucket}'
  prepare.prepare(raw, prepared, workers=1)
  assert prepare.verify(raw, prepared).damaged == []

  def first_batches(dataset):
    run = config.copy_and_resolve_references()
    run.dataset = dataset
    train_batch = next(iter(iterators.create_train_iterator(run)))
    eval_batch = next(iter(iterators.create_eval_iterator(run)))
    return train_batch, eval_batch

  local_prepared = first_batches(f'prepared:{_local_prepared(config)}')
  for got, want in ((first_batches(f'prepared:{prepared}'), local_prepared),
                    (first_batches(f'folder:{in_bucket}'),
                     first_batches(f'folder:{root}'))):
    for got_batch, want_batch in zip(got, want):
      assert set(got_batch) == set(want_batch)
      for key in want_batch:
        np.testing.assert_array_equal(got_batch[key], want_batch[key])


def _local_prepared(config):
  import tempfile  # pylint: disable=g-import-not-at-top
  out = tempfile.mkdtemp(prefix='prepared-')
  prepare.prepare(config, out, workers=1)
  return out


def test_the_hold_in_a_bucket(gcs):
  workdir = gcs.url('held')
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time\n'
       'from alexnet_jax import storage\n'
       'storage.WorkdirHold(sys.argv[1]).acquire()\n'
       'print("held", flush=True)\ntime.sleep(600)', workdir],
      env={**experiment_config.subprocess_env(), **gcs.env},
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(storage.WorkdirHeld,
                       match=f'process id {holder.pid}'):
      storage.WorkdirHold(workdir).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  hold = storage.WorkdirHold(workdir)
  hold.acquire()
  assert storage.read_json(storage.join(workdir, storage.HOLD_FILE))[
      'pid'] == os.getpid()
  hold.release()
  # Through the client that holds (TensorFlow's caches what it last saw).
  from google.cloud import storage as gcs_client  # pylint: disable=g-import-not-at-top
  assert not gcs_client.Client().bucket(gcs.bucket).blob(
      f'held/{storage.HOLD_FILE}').exists()


def test_check_storage_passes_on_a_bucket_and_fails_where_it_cannot_write(
    gcs, capsys, tmp_path):
  assert check_storage.check(gcs.url('checked'))
  (tmp_path / 'file').write_text('not a directory')
  assert not check_storage.check(str(tmp_path / 'file' / 'run'))
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 6
  assert all(line.endswith(' s)') for line in lines)
  assert all(': ok (' in line for line in lines[:3])
  assert all(': FAILED: ' in line for line in lines[3:])


class AlexnetJaxTinyImages(tfds.core.GeneratorBasedBuilder):
  """A TFDS dataset of 8 train and 4 validation images, two classes."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, supervised_keys=('image', 'label'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(names=['dark', 'light'])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(8),
            'validation': self._generate_examples(4)}

  def _generate_examples(self, count):
    rng = np.random.default_rng(count)
    for i in range(count):
      yield i, {'image': rng.integers(0, 256, (48, 40, 3), np.uint8),
                'label': i % 2}


def test_a_tfds_data_dir_in_a_bucket_reads_as_locally(
    gcs, tiny_config_factory, tmp_path):
  local = str(tmp_path / 'tfds')
  AlexnetJaxTinyImages(data_dir=local).download_and_prepare()
  storage.copy_tree(local, gcs.url('tfds'))

  def first_batches(data_dir):
    config = tiny_config_factory(dataset='alexnet_jax_tiny_images',
                                 data_dir=data_dir, batch_size=4,
                                 eval_batch_size=4)
    config.model.num_classes = 2
    assert sources.num_train_examples(config) == 8
    return (next(iter(iterators.create_train_iterator(config))),
            next(iter(iterators.create_eval_iterator(config))))

  for got, want in zip(first_batches(gcs.url('tfds')), first_batches(local)):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
