"""What a user sees: each tool's own lines only, unless -v asks for more.

Every tool runs as a subprocess without the JAX_PLATFORMS=cpu the suite
sets, so it starts as it does for a user: with the TPU runtime (the tpu
extra) installed, on a host that may have no TPU.
"""

import logging
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from alexnet_jax import aot
from alexnet_jax import cli

import experiment_config

REPO = pathlib.Path(__file__).resolve().parent.parent
# main, and every program under alexnet_jax/tools by its short name.
TOOLS = sorted(['main'] + [
    path.stem for path in (REPO / 'alexnet_jax' / 'tools').glob('*.py')
    if "if __name__ == '__main__':" in path.read_text()])

# Lines the libraries print: C++ and absl log prefixes (I0000 00:00:...,
# W1128 17:25:00...), absl's and libtpu's start-up notices, TensorFlow's
# oneDNN notice, JAX's backend messages and device list, orbax's INFO.
NOISE = re.compile('|'.join([
    r'^[IWEF]\d{4} \d\d:\d\d:\d\d', r'absl::InitializeLog', r'InitGoogle',
    r'oneDNN', r'cpu_feature_guard', r'Source Location Trace',
    r'host bounds', r'worker hostname', r'jellyfish', r'libtpu',
    r'Unable to initialize backend', r'TPU_', r'CpuDevice\(',
    r'CheckpointManager', r'[Hh]andler[Rr]egistry', r'orbax',
    r'^WARNING: ']))

TINY = {'synthetic.num_classes': 4, 'synthetic.train_per_class': 12,
        'synthetic.val_per_class': 5, 'input.resize_size': 76,
        'input.shuffle_buffer': 64, 'model.input_size': 67,
        'model.num_classes': 4, 'model.conv_features': '(8, 16, 24, 24, 16)',
        'model.fc_features': '(32, 32)', 'batch_size': 8,
        'eval_batch_size': 8, 'num_train_steps': 2, 'eval_every_steps': 2,
        'checkpoint_every_steps': 2, 'log_every_steps': 1,
        'eval_ten_crop': False}


def _user_env() -> dict[str, str]:
  """The suite's environment without what the suite sets for itself: JAX on
  the CPU (conftest), and the TPU runtime's settings that describing a TPU
  slice in this process leaves behind (which say the host has a TPU). The
  suite's compilation cache stays: it changes what a tool compiles, not what
  it prints."""
  suite = ['JAX_PLATFORMS', *aot._LIBTPU_ENV]  # pylint: disable=protected-access
  return {key: value for key, value in
          experiment_config.subprocess_env().items() if key not in suite}


def _tool(tool: str, *args: str, cwd=REPO) -> subprocess.CompletedProcess:
  module = 'main' if tool == 'main' else f'tools.{tool}'
  return subprocess.run([sys.executable, '-m', f'alexnet_jax.{module}', *args],
                        cwd=cwd, env=_user_env(), capture_output=True,
                        text=True, check=False, timeout=600)


def _noise(run: subprocess.CompletedProcess) -> list[str]:
  return [line for line in (run.stdout + run.stderr).splitlines()
          if NOISE.search(line)]


def _demo(synthetic_dir, **overrides) -> list[str]:
  """--config=configs/demo.py at the tiny size, data in `synthetic_dir`."""
  values = {**TINY, 'synthetic.cache_dir': synthetic_dir, **overrides}
  return [f'--config={REPO}/configs/demo.py',
          *[f'--config.{key}={value}' for key, value in values.items()]]


@pytest.fixture(scope='module')
def synthetic_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, synthetic_dir):
  """(main's run, its workdir): two steps of the tiny demo net."""
  workdir = tmp_path_factory.mktemp('console') / 'run'
  run = _tool('main', *_demo(synthetic_dir), f'--workdir={workdir}')
  assert run.returncode == 0, run.stderr[-3000:]
  return run, str(workdir)


@pytest.fixture(scope='module')
def image(tmp_path_factory):
  path = tmp_path_factory.mktemp('images') / 'a.png'
  Image.fromarray(np.random.default_rng(0).integers(
      0, 256, (90, 100, 3), np.uint8)).save(path)
  return str(path)


def _run_main(trained, **_):
  return trained[0]


def _run_predict(trained, image, **_):
  return _tool('predict', f'--checkpoint={trained[1]}', image)


def _run_visualize(trained, synthetic_dir, tmp_path, **_):
  return _tool('visualize', f'--checkpoint={trained[1]}',
               f'--out={tmp_path / "figures"}', *_demo(synthetic_dir),
               '--max_train_images=20', '--num_queries=2',
               '--num_neighbors=2')


def _run_convert(trained, tmp_path, **_):
  """Reads the tiny two-tower checkpoint (orbax, JAX), which torchvision's
  one-tower layout cannot take: one error line, and nothing else."""
  run = _tool('convert', '--to=torchvision', trained[1],
              f'--out={tmp_path / "alexnet.pth"}')
  assert run.stderr.startswith('error: model.num_towers: 2 in the checkpoint')
  assert len(run.stderr.splitlines()) == 1
  return run


def _run_report(trained, tmp_path, **_):
  return _tool('report', trained[1], f'--out={tmp_path / "report"}')


def _run_cost(synthetic_dir, **_):
  return _tool('cost', *_demo(synthetic_dir), '--devices=2')


def _run_plan(tmp_path, **_):
  return _tool('plan', '--hardware=owt_k20', '--modes=tower',
               '--devices=1,2', '--variant=paper', f'--out={tmp_path}')


def _run_summary(**_):
  return _tool('summary', f'--config={REPO}/configs/two_tower.py')


def _run_benchmark(synthetic_dir, **_):
  return _tool('benchmark', *_demo(synthetic_dir), '--batch_size=4',
               '--steps=1', '--warmup=1')


def _run_benchmark_input(synthetic_dir, **_):
  return _tool('benchmark_input', *_demo(synthetic_dir), '--batches=2',
               '--warmup_batches=1')


def _run_data_stats(synthetic_dir, tmp_path, **_):
  return _tool('data_stats', *_demo(synthetic_dir), '--max_images=8',
               f'--out={tmp_path / "stats.npz"}')


def _run_prepare(tmp_path, image, **_):
  root = tmp_path / 'folder'
  for split in ('train', 'val'):
    for label in ('a', 'b'):
      os.makedirs(root / split / label)
      os.link(image, root / split / label / '0.png')
  return _tool('prepare', f'--config={REPO}/configs/two_tower.py',
               f'--config.dataset=folder:{root}',
               '--config.input.resize_size=40', f'--out={tmp_path / "out"}',
               '--workers=1')


def _run_profile(synthetic_dir, tmp_path, **_):
  return _tool('profile', *_demo(synthetic_dir), '--batch_size=4',
               '--steps=1', '--warmup=1', f'--out={tmp_path / "trace"}')


def _run_benchmark_checkpoint(synthetic_dir, tmp_path, **_):
  return _tool('benchmark_checkpoint', *_demo(synthetic_dir), '--saves=1',
               '--steps_between=1', f'--location={tmp_path}')


def _run_check_storage(tmp_path, **_):
  return _tool('check_storage', str(tmp_path / 'workdir'))


# How each tool runs here, on tiny inputs. A new tool goes in this list.
RUNS = {'main': _run_main, 'predict': _run_predict,
        'visualize': _run_visualize, 'convert': _run_convert,
        'report': _run_report, 'cost': _run_cost, 'plan': _run_plan,
        'summary': _run_summary, 'benchmark': _run_benchmark,
        'benchmark_input': _run_benchmark_input,
        'data_stats': _run_data_stats, 'prepare': _run_prepare,
        'profile': _run_profile,
        'benchmark_checkpoint': _run_benchmark_checkpoint,
        'check_storage': _run_check_storage}

NEEDS_A_RUN = {'main', 'predict', 'visualize', 'convert', 'report'}
FAILS = {'convert'}


def test_every_tool_has_a_console_check():
  assert set(RUNS) == set(TOOLS)


@pytest.mark.slow
@pytest.mark.parametrize('tool', sorted(RUNS))
def test_a_tool_prints_no_library_lines(tool, request, tmp_path,
                                        synthetic_dir, image):
  trained = request.getfixturevalue('trained') if tool in NEEDS_A_RUN else None
  run = RUNS[tool](trained=trained, synthetic_dir=synthetic_dir,
                   tmp_path=tmp_path, image=image)
  assert run.returncode == (1 if tool in FAILS else 0), run.stderr[-3000:]
  assert (run.stdout + run.stderr).strip()
  assert _noise(run) == []


@pytest.mark.slow
def test_mains_first_line_says_what_the_run_is(trained):
  run, workdir = trained
  assert run.stdout.splitlines()[0] == (
      f'{REPO}/configs/demo.py: tower mode on 2 cpu devices, 1 process; '
      f'dataset synthetic; train 2 steps, global batch 8; workdir {workdir}')


@pytest.mark.slow
def test_a_tpu_slice_is_described_with_no_library_lines(synthetic_dir):
  """The TPU runtime loads, with no TPU backend, to describe the slice."""
  run = _tool('main', *_demo(synthetic_dir, mode='data_tower', num_devices=4),
              '--dry_run', '--topology=v5e:2x2')
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.startswith('dry run: mode data_tower, 4 of 4 TPU v5 lite')
  assert _noise(run) == []


@pytest.mark.slow
def test_verbose_brings_the_libraries_logs_back(trained, image):
  run = _tool('predict', f'--checkpoint={trained[1]}', image, '-v=1')
  assert run.returncode == 0, run.stderr[-3000:]
  noise = '\n'.join(_noise(run))
  assert 'oneDNN' in noise  # TensorFlow's C++ INFO.
  assert 'orbax' in noise  # A Python library's INFO.
  assert "Initializing backend 'cpu'" in noise  # JAX's DEBUG.


@pytest.mark.parametrize('argv, expected', [
    ([], False), (['-v=1'], True), (['--verbosity', '0'], True),
    (['--v=-1'], False), (['--config=x', '-v', '2'], True),
    (['--verbose_logs'], False), (['-v=x'], True)])
def test_verbose_reads_absl_verbosity_forms(argv, expected):
  assert cli.verbose(argv) == expected


def test_a_users_jax_platforms_is_kept(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', '')
  assert cli.jax_platforms() is None


def test_a_host_told_it_has_a_tpu_keeps_jaxs_choice(monkeypatch):
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  monkeypatch.setenv('TPU_ACCELERATOR_TYPE', 'v5litepod-8')
  assert cli.host_has_tpu()
  assert cli.jax_platforms() is None


def test_a_backend_that_did_not_start_is_one_warning_line():
  record = logging.LogRecord(
      'jax._src.xla_bridge', logging.INFO, 'xla_bridge.py', 1,
      "Unable to initialize backend 'tpu': %s", ('INTERNAL: no chip\nmore',),
      None)
  assert cli._backend_failures_as_warnings(record)  # pylint: disable=protected-access
  assert (record.levelno, record.getMessage()) == (
      logging.WARNING, "Unable to initialize backend 'tpu': INTERNAL: no chip")
  other = logging.LogRecord('jax._src.xla_bridge', logging.INFO,
                            'xla_bridge.py', 1, "Initializing backend 'cpu'",
                            (), None)
  assert not cli._backend_failures_as_warnings(other)  # pylint: disable=protected-access
