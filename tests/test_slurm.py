"""`launch/slurm_gpu.sbatch` under a real SLURM: 2 tasks on this machine's CPU.

Needs this machine to be an up SLURM node with 2 CPUs (the jobs write to a
local temporary directory), as in the one-node cluster that
`launch/slurm_local_cluster.sh` starts (as root; `.ci/run` does). Without
one the tests skip and say why; with ALEXNET_JAX_REQUIRE_SLURM=1 (set by
`.ci/run` as root) they fail instead.
The jobs inherit this environment (sbatch exports it), so they run this
checkout with this Python on the CPU, and JAX finds its processes from
SLURM's variables alone. Augmentation and dropout are off; the 2 tasks'
losses are compared with 1 process's step by step.
"""

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from alexnet_jax import train

import experiment_config

pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess]

NODE = socket.gethostname().split('.')[0]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH = os.path.join(REPO, 'launch', 'slurm_gpu.sbatch')
NUM_STEPS = 100  # About 4 s of steps here: time to cancel mid-run.
CANCEL_AFTER_STEPS = 5  # Past the first steps' compilation and warm-up.
JOB_TIMEOUT_S = 420
FINISHED = ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL',
            'OUT_OF_MEMORY', 'PREEMPTED', 'BOOT_FAIL', 'DEADLINE')


def _unavailable() -> str | None:
  """Why SLURM cannot run a job on this machine, or None if it can."""
  if shutil.which('sbatch') is None:
    return 'SLURM is not installed'
  try:
    result = subprocess.run(['sinfo', '-h', '-n', NODE, '-o', '%T %c'],
                            capture_output=True, text=True, timeout=15)
  except subprocess.TimeoutExpired:
    return 'sinfo did not answer in 15 s'
  if result.returncode != 0:
    return f'no SLURM controller answers: {result.stderr.strip()}'
  nodes = [line.split() for line in result.stdout.splitlines()]
  if not any(state.rstrip('*') in ('idle', 'mixed', 'allocated')
             and int(cpus) >= 2 for state, cpus in nodes):
    return (f'this machine ({NODE}) is not an up SLURM node with 2 CPUs '
            f'(sinfo: {result.stdout.strip()!r})')
  return None


@pytest.fixture(scope='session')
def slurm() -> None:
  """Skips (or fails, where SLURM is required) without a usable cluster."""
  reason = _unavailable()
  if reason:
    reason += '; start a cluster with launch/slurm_local_cluster.sh (as root)'
    if os.environ.get('ALEXNET_JAX_REQUIRE_SLURM'):
      pytest.fail(reason)
    pytest.skip(reason)


def _submit(config, workdir) -> str:
  """Submits the project's script as a user on CPU nodes would; the job id."""
  result = subprocess.run(
      ['sbatch', '--parsable', '--ntasks-per-node=2', '--gpus-per-node=0',
       '--cpus-per-task=1', f'--nodelist={NODE}', '--time=10',
       '--job-name=alexnet_jax_test', f'--output={workdir}.out', SBATCH,
       os.path.join(REPO, 'configs', 'demo.py'), str(workdir),
       *experiment_config.overrides(config)],
      env=experiment_config.subprocess_env(), capture_output=True, text=True,
      timeout=60, check=True)
  return result.stdout.strip().split(';')[0]


def _state(job: str) -> str:
  result = subprocess.run(['squeue', '-h', '-t', 'all', '-j', job, '-o', '%T'],
                          capture_output=True, text=True, timeout=30)
  return result.stdout.strip()


def _wait(job: str, workdir) -> str:
  """Polls until the job has finished; its final state."""
  deadline = time.monotonic() + JOB_TIMEOUT_S
  while (state := _state(job)) not in FINISHED:
    if time.monotonic() > deadline:
      subprocess.run(['scancel', job], check=False, timeout=30)
      pytest.fail(f'job {job} still {state} after {JOB_TIMEOUT_S} s:\n'
                  + _output(workdir))
    time.sleep(1)
  return state


def _output(workdir) -> str:
  """The job's output (every run of it, appended)."""
  try:
    with open(f'{workdir}.out') as f:
      return f.read()
  except FileNotFoundError:
    return f'(no output in {workdir}.out)'


def _metrics(workdir) -> dict[int, dict[str, float]]:
  """metrics.jsonl by step, less the timings; a resumed run's lines replace
  the earlier ones."""
  by_step = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in map(json.loads, f):
      by_step.setdefault(line.pop('step'), {}).update(
          (key, value) for key, value in line.items()
          if not key.startswith('perf/'))
  return by_step


def _losses(workdir) -> list[float]:
  metrics = _metrics(workdir)
  return [metrics[step]['train/loss'] for step in sorted(metrics)
          if 'train/loss' in metrics[step]]


def _steps_logged(workdir) -> int:
  """Train steps in metrics.jsonl so far (read while it is being written)."""
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return f.read().count('"train/loss"')
  except FileNotFoundError:
    return 0


def _checkpoints(workdir) -> list[int]:
  return sorted(int(name) for name in
                os.listdir(os.path.join(workdir, 'checkpoints'))
                if name.isdigit())


@pytest.fixture(scope='session')
def run_config(tiny_config_factory):
  return tiny_config_factory(
      mode='tower', num_devices=2, num_train_steps=NUM_STEPS,
      eval_every_steps=NUM_STEPS, checkpoint_every_steps=NUM_STEPS,
      **{'input.random_crop': False, 'input.random_flip': False,
         'input.pca_lighting_sigma': 0.0, 'model.dropout_rate': 0.0})


@contextlib.contextmanager
def _locked(path):
  with open(path, 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


@pytest.fixture(scope='session')
def uninterrupted(slurm, run_config, tmp_path_factory):
  """The workdir of one uninterrupted 2-task job; pytest-xdist workers share
  it (the first to get here runs it)."""
  del slurm
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent
  workdir = root / 'slurm_uninterrupted'
  with _locked(root / 'slurm_uninterrupted.lock'):
    if not (root / 'slurm_uninterrupted.state').exists():
      shutil.rmtree(workdir, ignore_errors=True)
      state = _wait(_submit(run_config, workdir), workdir)
      (root / 'slurm_uninterrupted.state').write_text(state)
  state = (root / 'slurm_uninterrupted.state').read_text()
  assert state == 'COMPLETED', _output(workdir)
  return workdir


def test_two_slurm_tasks_match_one_process(uninterrupted, run_config,
                                           tmp_path):
  train.train_and_evaluate(run_config, str(tmp_path / 'one'))
  one, two = _losses(tmp_path / 'one'), _losses(uninterrupted)
  assert len(one) == len(two) == NUM_STEPS
  np.testing.assert_allclose(two, one, rtol=1e-5)
  assert len(set(one)) > 1  # The parameters really changed.
  output = _output(uninterrupted)
  assert 'tower mode on 2 cpu devices, 2 processes;' in output, output
  assert _checkpoints(uninterrupted) == [NUM_STEPS]


def test_scancel_then_same_command_ends_as_uninterrupted(uninterrupted,
                                                         run_config,
                                                         tmp_path):
  workdir = tmp_path / 'preempted'
  job = _submit(run_config, workdir)
  deadline = time.monotonic() + JOB_TIMEOUT_S
  while _steps_logged(workdir) < CANCEL_AFTER_STEPS:
    assert _state(job) not in FINISHED, _output(workdir)
    assert time.monotonic() < deadline, _output(workdir)
    time.sleep(0.2)
  subprocess.run(['scancel', job], check=True, timeout=30)
  assert _wait(job, workdir) == 'CANCELLED'
  output = _output(workdir)
  saved = _checkpoints(workdir)
  assert len(saved) == 1 and 0 < saved[0] < NUM_STEPS, output
  assert f'SIGTERM at step {saved[0]}: checkpoint saved' in output, output

  again = _submit(run_config, workdir)
  assert _wait(again, workdir) == 'COMPLETED', _output(workdir)
  assert f'resumed from {workdir}/checkpoints/{saved[0]}' in _output(workdir)
  assert _metrics(workdir) == _metrics(uninterrupted)
  assert 'eval/top1_error' in _metrics(workdir)[NUM_STEPS]
