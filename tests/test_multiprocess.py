"""Multi-controller training (2 processes x 1 CPU device) equals 1 process.

The two-process runs go through `launch/local_multiprocess.sh`: real
processes joined by `jax.distributed` over a loopback coordinator, with
collectives over gloo. Augmentation and dropout are off because both are
keyed by position (the data shard of a process, the row of the global
batch), and the global batch interleaves the processes' shards differently
from one process's batch; the examples of every step are the same.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import train

import experiment_config

pytestmark = pytest.mark.multiprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, 'launch', 'local_multiprocess.sh')


def _train_losses(workdir) -> list[float]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  return [line['train/loss'] for line in lines if 'train/loss' in line]


@pytest.fixture
def run_config(tiny_config_factory):
  def make(mode):
    return tiny_config_factory(
        mode=mode, num_devices=2, num_train_steps=4, checkpoint_every_steps=4,
        eval_ten_crop=False, **{'input.random_crop': False,
                                'input.random_flip': False,
                                'input.pca_lighting_sigma': 0.0,
                                'model.dropout_rate': 0.0})
  return make


# Data mode on several processes: tests/test_resume_reshape.py.
@pytest.mark.parametrize('mode', ['tower'])
def test_two_processes_match_one(run_config, tmp_path, mode):
  config = run_config(mode)
  train.train_and_evaluate(config, str(tmp_path / 'one'))
  result = subprocess.run(  # -v=0: each process logs which it is.
      [LAUNCH, '2', os.path.join(REPO, 'configs', 'demo.py'),
       str(tmp_path / 'two'), *experiment_config.overrides(config), '-v=0'],
      env=experiment_config.subprocess_env(), capture_output=True, text=True,
      timeout=540)
  assert result.returncode == 0, result.stderr
  one, two = _train_losses(tmp_path / 'one'), _train_losses(tmp_path / 'two')
  assert len(one) == len(two) == 4  # Only process 0 wrote metrics.
  np.testing.assert_allclose(two, one, rtol=1e-5)
  assert len(set(one)) > 1  # The parameters really changed.
  with open(tmp_path / 'two' / 'config.json') as f:
    assert json.load(f)['mode'] == mode
  log = (tmp_path / 'two' / 'process_1.log').read_text()
  assert 'JAX process 1/2' in log
  steps = os.listdir(tmp_path / 'two' / 'checkpoints')
  assert '4' in steps  # Written jointly by both processes.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_workdir_not_shared_fails_on_every_process(tiny_config_factory,
                                                   tmp_path):
  config = tiny_config_factory(mode='data', num_devices=2)
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main',
       f'--config={REPO}/configs/demo.py', f'--workdir={tmp_path}/host{i}',
       '--distributed', f'--coordinator_address=localhost:{port}',
       '--num_processes=2', f'--process_id={i}',
       *experiment_config.overrides(config)],
      env=experiment_config.subprocess_env(), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for proc, output in zip(procs, outputs):
    assert proc.returncode == 1, output
    assert 'processes [1] cannot see' in output, output
    assert 'every process' in output
  assert not os.path.exists(tmp_path / 'host0' / 'metrics.jsonl')
