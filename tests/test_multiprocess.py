"""Multi-controller runs need a workdir every process sees; and the helpers
of the tests that start processes one by one (a free loopback port).

Two processes ending where one does, started by
`launch/local_multiprocess.sh` among others: tests/test_resume_reshape.py.
"""

import os
import socket
import subprocess
import sys

import pytest

import experiment_config

pytestmark = pytest.mark.multiprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
