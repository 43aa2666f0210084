"""A run stopped on one shape of processes and devices resumes on another
and ends where a run that was never stopped ends.

Each case starts its processes apart, as a pod or a scheduler starts them
(loopback coordinator, `--process_id`), stops them with SIGTERM mid-epoch,
resumes with another number of processes (the devices per process chosen
so that the global device count stays: 2 -> 1 in three modes, 1 -> 2 in
mode data, where each process then reads half as many rows of the global
batch, and 1 -> 2 after the first resume in mode tower, started by
`launch/local_multiprocess.sh`), and compares the final parameters with an
uninterrupted one-process run at the same global batch, in this process.
Augmentation and dropout are on: both are keyed by what the global order
and the global batch fix, not by the process. Every mode and every
kind of source appears once; the width is the suite's tiny one.
"""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from alexnet_jax import train
from alexnet_jax.data import prepare
from alexnet_jax.data import synthetic

import experiment_config
import test_multiprocess
import test_preemption

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

REPO = test_multiprocess.REPO
LAUNCH = os.path.join(REPO, 'launch', 'local_multiprocess.sh')


def _start(config, workdir, processes: int, overrides=()
           ) -> list[subprocess.Popen]:
  """The processes of one run, started one by one."""
  port = test_multiprocess._free_port()
  return [subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main',
       f'--config={REPO}/configs/demo.py', f'--workdir={workdir}',
       '--distributed', f'--coordinator_address=localhost:{port}',
       f'--num_processes={processes}', f'--process_id={i}',
       *experiment_config.overrides(config), *overrides],
      env=experiment_config.subprocess_env(), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(processes)]


def _run(config, workdir, processes: int, steps: int) -> list[str]:
  """`processes` processes (1: `main` alone) run `workdir` on to `steps`."""
  target = [f'--config.num_train_steps={steps}']
  if processes > 1:
    return test_preemption._finish(_start(config, workdir, processes,
                                          target), timeout=600)
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main',
       f'--config={REPO}/configs/demo.py', f'--workdir={workdir}',
       *experiment_config.overrides(config), *target],
      env=experiment_config.subprocess_env(), capture_output=True,
      text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  return [result.stdout + result.stderr]


def _launch(config, workdir, processes: int, steps: int) -> None:
  """`launch/local_multiprocess.sh` runs `workdir` on to `steps` (-v=0:
  each process logs which it is, into its own log in the workdir)."""
  result = subprocess.run(
      [LAUNCH, str(processes), f'{REPO}/configs/demo.py', str(workdir),
       *experiment_config.overrides(config),
       f'--config.num_train_steps={steps}', '-v=0'],
      env=experiment_config.subprocess_env(), capture_output=True, text=True,
      timeout=600, check=False)
  assert result.returncode == 0, result.stderr
  last = processes - 1
  assert f'JAX process {last}/{processes}' in (
      workdir / f'process_{last}.log').read_text()


def _stop_with_sigterm(config, workdir, processes: int) -> int:
  """Starts a long run, signals every process after step 3; the step saved."""
  procs = _start(config, workdir, processes)
  test_preemption._wait_for_step(workdir, 3, procs)
  for proc in procs:
    proc.send_signal(signal.SIGTERM)
  outputs = test_preemption._finish(procs, timeout=300)
  steps = {int(line.split('SIGTERM at step ')[1].split(':')[0])
           for output in outputs for line in output.splitlines()
           if 'SIGTERM at step' in line}
  assert len(steps) == 1, outputs
  return steps.pop()


@pytest.fixture(scope='module')
def datasets(tiny_config_factory, tmp_path_factory):
  """The tiny synthetic set as itself, as a folder with an undecodable
  file (replaced by the next file of the order, on every shape alike) and
  prepared in shards of 5 (10 shards: windows of 4, 4 and 2)."""
  config = tiny_config_factory()
  root = synthetic.generate_from_config(config)
  folder = tmp_path_factory.mktemp('folder')
  shutil.copytree(root, folder, dirs_exist_ok=True)
  first_class = min(os.listdir(folder / 'train'))
  (folder / 'train' / first_class / 'broken.png').write_bytes(b'\x89PNG no')
  prepared = tmp_path_factory.mktemp('prepared')
  prepare.prepare(config, str(prepared), examples_per_shard=5, workers=1)
  return {'synthetic': 'synthetic', 'folder': f'folder:{folder}',
          'prepared': f'prepared:{prepared}'}


# (mode, num_devices, source, processes stopped, processes resumed, and
# {'then': processes of a second resume after the first}).
CASES = [
    ('data', 2, 'synthetic', 1, 2, {}),
    ('tower', 2, 'folder', 2, 1, {'then': 2}),
    ('data_tower', 4, 'prepared', 2, 1, {}),
    ('hybrid', 2, 'folder', 2, 1, {}),
]


@pytest.mark.parametrize('mode,devices,source,stopped,resumed,more', CASES)
def test_resumes_exactly_on_another_shape(tiny_config_factory, datasets,
                                          tmp_path, mode, devices, source,
                                          stopped, resumed, more):
  config = tiny_config_factory(
      mode=mode, num_devices=devices, dataset=datasets[source],
      num_train_steps=10_000, checkpoint_every_steps=10_000,
      eval_every_steps=10_000)
  workdir = tmp_path / 'stopped'
  saved = _stop_with_sigterm(config, workdir, stopped)
  shape = f'{stopped} -> {resumed}'
  step = saved + 3
  output = _run(config, workdir, resumed, step)[0]
  assert f'resumed from {workdir}/checkpoints/{saved}' in output
  assert 'restarts epoch' not in output
  if 'then' in more:
    step += 2
    _launch(config, workdir, more['then'], step)
    shape += f' -> {more["then"]}'
  config.num_train_steps = step
  train.train_and_evaluate(config, str(tmp_path / 'straight'))
  worst = test_preemption._assert_same_parameters(
      config, workdir, tmp_path / 'straight', step)
  print(f'{mode} {source}: {shape} processes, max |difference| {worst:g}')
