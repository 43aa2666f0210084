"""Multi-host stops, with each process started on its own (as a pod or a
scheduler starts them): signals that reach the processes a second apart, and
a process killed outright (the coordinator or another).

The processes join over a loopback coordinator, with a 10 s heartbeat bound
(`--lost_process_timeout`) so that a lost process is noticed quickly.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import train

import experiment_config
import test_multiprocess
import test_train

pytestmark = pytest.mark.multiprocess

REPO = test_multiprocess.REPO
BOUND = 10  # --lost_process_timeout, seconds.


@pytest.fixture
def config(tiny_config_factory):
  return tiny_config_factory(
      mode='data', num_devices=2, num_train_steps=10_000,
      checkpoint_every_steps=10_000, eval_every_steps=10_000)


def _start(config, workdir, port: int, overrides=(),
           env=None) -> list[subprocess.Popen]:
  """Both processes of a 2-process run, started one by one (`env`: the
  suite's subprocess environment, by default)."""
  return [subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main',
       f'--config={REPO}/configs/demo.py', f'--workdir={workdir}',
       '--distributed', f'--coordinator_address=localhost:{port}',
       '--num_processes=2', f'--process_id={i}',
       f'--lost_process_timeout={BOUND}',
       *experiment_config.overrides(config), *overrides],
      env=env or experiment_config.subprocess_env(), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _logged_steps(workdir) -> list[int]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)['step'] for line in f
            if 'train/loss' in line and line.endswith('\n')]


def _wait_for(predicate, procs, timeout=300) -> None:
  start = time.time()
  while not predicate():
    for proc in procs:
      assert proc.poll() is None, proc.communicate()[0]
    assert time.time() - start < timeout, 'no progress'
    time.sleep(0.1)


def _wait_for_step(workdir, step: int, procs) -> None:
  _wait_for(lambda: len(_logged_steps(workdir)) >= step, procs)


def _finish(procs, timeout=300) -> list[str]:
  outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
  for proc, output in zip(procs, outputs):
    assert proc.returncode == 0, output
  return outputs


# Signals a second apart on a shared workdir, one common step saved and a
# resume: tests/test_gcs.py (there in a bucket); exact resumes after a
# multi-process stop: tests/test_resume_reshape.py and the loss of process 1
# below.


def _assert_same_parameters(config, resumed, reference, step: int) -> float:
  """Both workdirs end at `step` with the same parameters (up to the
  order of reductions, which differs between processes and devices of one
  process); returns the largest difference."""
  step_a, a = test_train._final_params(config, str(resumed))
  step_b, b = test_train._final_params(config, str(reference))
  assert step_a == step_b == step
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    worst = max(worst, float(np.max(np.abs(x - y))))
  return worst


def _assert_resumes_exactly(config, stopped, reference, step: int) -> None:
  """Both processes, started again, run `stopped` on to `step`, where a
  run that was never stopped (one process, in `reference`) also ends."""
  target = [f'--config.num_train_steps={step}']
  _finish(_start(config, stopped, test_multiprocess._free_port(), target))
  straight = config.copy_and_resolve_references()
  straight.num_train_steps = step
  train.train_and_evaluate(straight, str(reference))
  _assert_same_parameters(config, stopped, reference, step)


# Resuming after the loss of process 1 is checked too; that code path does
# not depend on which process was lost.
@pytest.mark.parametrize('lost,resume', [(1, True), (0, False)])
def test_lost_process_stops_the_other_in_one_line(config, tmp_path, lost,
                                                  resume):
  workdir = tmp_path / 'lost'
  every = ['--config.checkpoint_every_steps=2']
  procs = _start(config, workdir, test_multiprocess._free_port(), every)
  _wait_for_step(workdir, 3, procs)
  _wait_for((workdir / 'checkpoints' / '2').exists, procs)
  procs[lost].send_signal(signal.SIGKILL)
  survivor = procs[1 - lost]
  # The flag's promise: the line within BOUND seconds of the loss; then the
  # process and its supervising parent exit (a few seconds on a busy host).
  output = survivor.communicate(timeout=BOUND + 10)[0]
  procs[lost].wait()
  assert survivor.returncode not in (0, None), output
  last = output.strip().splitlines()[-1]
  assert last.startswith(f'error: process {lost} '), output
  assert 'was lost' in last
  latest = max(int(name) for name in os.listdir(workdir / 'checkpoints')
               if name.isdigit())
  resume_from = last.split('resume from ')[1].rstrip('.')
  assert resume_from == str(workdir / 'checkpoints' / str(latest)), last
  if resume:
    _assert_resumes_exactly(config, workdir, tmp_path / 'straight',
                            latest + 2)
