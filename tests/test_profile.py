"""The profile of real train steps: what it reads from a trace, and the
training-time capture."""

import gzip
import json
import os
import re
import subprocess
import sys

import jax
import pytest

from alexnet_jax import capture
from alexnet_jax import steps
from alexnet_jax import train
from alexnet_jax.analysis import hlo
from alexnet_jax.analysis import trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _traced(config, out_dir, num_steps=2):
  """(figures, HLO text, trace path) of `num_steps` traced train steps."""
  step = steps.resident_train_step(config, config.batch_size)
  text = step.compiled().as_text()
  step()
  path, _ = capture.trace_steps(step, num_steps, str(out_dir))
  ops, _ = trace.read_ops(path, trace.module_name(text))
  figures = trace.measure(ops, trace.known_collectives(text))
  trace.add_compiled_bytes(figures, text, config.num_devices)
  return figures, text, path, ops


@pytest.fixture(scope='module')
def tower(tiny_config_factory, tmp_path_factory):
  config = tiny_config_factory(mode='tower', num_devices=2)
  return _traced(config, tmp_path_factory.mktemp('tower'))


@pytest.mark.slow
def test_tower_finds_the_exchange_collectives(tower):
  figures, text, _, ops = tower
  compiled = hlo.collectives(text)
  assert {op.kind for op in compiled} == {'all-gather', 'reduce-scatter'}
  assert figures['devices'] == 2 and figures['steps'] == 2
  for kind, row in figures['collectives'].items():
    assert row['seconds'] > 0, kind
    assert row['count'] == sum(op.kind == kind for op in compiled)
    assert row['events_per_step'] == row['count']
    assert row['gbytes_per_s'] > 0
  measured = {(op.device, op.run, op.name) for op in ops}
  runs = {(op.device, op.run) for op in ops}
  for device, run in runs:
    assert {(device, run, op.name) for op in compiled} <= measured
  assert 0 < figures['collective_seconds'] <= figures['step_seconds']


@pytest.mark.slow
def test_bytes_are_the_exchanges_by_hand(tower):
  # The tiny net on 8 images, float32, one tower per device. Per tower and
  # image: pool2 3x3x16, pool5 1x1x16, fc6 and fc7 32 each, 2 of the 4
  # classes. Each of the 5 forward all-gathers brings the other tower's
  # half; each of the 4 backward reduce-scatters sends one tower's share.
  halves = [8 * 3 * 3 * 16 * 4, 8 * 1 * 1 * 16 * 4, 8 * 32 * 4, 8 * 32 * 4]
  logits = 8 * 2 * 4
  figures = tower[0]
  assert {k: (r['count'], r['bytes'])
          for k, r in figures['collectives'].items()} == {
              'all-gather': (5, sum(halves) + logits),  # 7232
              'reduce-scatter': (4, sum(halves))}  # 7168


@pytest.mark.slow
def test_fractions_are_shares_of_the_step(tower):
  figures = tower[0]
  assert 0 <= figures['exposed_collective_fraction'] <= 1
  assert 0 < figures['compute_seconds'] <= figures['step_seconds']
  for row in figures['per_device'].values():
    assert 0 <= row['exposed_seconds'] <= row['collective_seconds']


@pytest.mark.slow
def test_trace_is_where_tensorboard_reads_it(tower):
  trace = tower[2]
  assert re.search(r'plugins/profile/[^/]+/[^/]+\.xplane\.pb$', trace)
  assert os.path.getsize(trace) > 0
  with gzip.open(os.path.join(os.path.dirname(trace),
                              'perfetto_trace.json.gz')) as f:
    assert json.load(f)['traceEvents']


@pytest.mark.slow
def test_one_device_has_no_collectives(tiny_config_factory, tmp_path):
  config = tiny_config_factory(mode='single', num_devices=1)
  figures = _traced(config, tmp_path, num_steps=1)[0]
  assert figures['collective_seconds'] == 0
  assert figures['exposed_collective_fraction'] == 0
  assert figures['collectives'] == {}
  assert figures['compute_seconds'] > 0


def test_exposed_time_is_collective_time_without_compute():
  ops = [trace.Op('fusion.1', 0, 7, 0, 10_000),
         trace.Op('all-gather.2', 0, 7, 5_000, 15_000),
         trace.Op('fusion.3', 0, 7, 15_000, 20_000)]
  split = trace.step_split(ops, {})
  assert split['step_seconds'] == pytest.approx(20e-6)
  assert split['compute_seconds'] == pytest.approx(15e-6)
  assert split['collective_seconds'] == pytest.approx(10e-6)
  assert split['exposed_seconds'] == pytest.approx(5e-6)


def test_collective_kinds_from_the_program_or_the_opcode():
  known = {'psum.4': 'all-reduce'}
  assert trace.collective_kind('psum.4', known) == 'all-reduce'
  assert trace.collective_kind('all_gather_invariant.3', {}) == 'all-gather'
  assert trace.collective_kind('all-reduce-done.1', {}) == 'all-reduce'
  assert trace.collective_kind('reduce_multiply_fusion', {}) is None


def test_no_ops_gives_no_figures():
  assert trace.measure([], {}) is None


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [(line['step'], line['train/loss'])
            for line in map(json.loads, f) if 'train/loss' in line]


@pytest.mark.slow
def test_training_capture_leaves_the_losses_unchanged(tiny_config_factory,
                                                      tmp_path):
  plain = tiny_config_factory(mode='tower', num_devices=2)
  traced = tiny_config_factory(mode='tower', num_devices=2,
                               profile_steps=(1, 3))
  train.train_and_evaluate(plain, str(tmp_path / 'plain'))
  train.train_and_evaluate(traced, str(tmp_path / 'traced'),
                           on_profiled=trace.profile_hook)
  assert _losses(tmp_path / 'traced') == _losses(tmp_path / 'plain')
  assert len(_losses(tmp_path / 'plain')) == plain.num_train_steps
  with open(tmp_path / 'traced' / 'profile.json') as f:
    figures = json.load(f)
  assert figures['steps'] == 2
  assert (figures['mode'], figures['num_devices']) == ('tower', 2)
  assert figures['collectives']['all-gather']['seconds'] > 0
  assert figures['trace'].startswith(str(tmp_path / 'traced' / 'tensorboard'))
  assert not (tmp_path / 'plain' / 'profile.json').exists()


@pytest.mark.parametrize('window', [(0, 2), (3, 3), (2, 1), (1, 2, 3)])
def test_bad_window_is_a_clear_error(tiny_config_factory, tmp_path, window):
  config = tiny_config_factory(profile_steps=window)
  with pytest.raises(ValueError, match='config.profile_steps'):
    capture.TrainCapture.from_config(config, str(tmp_path), str(tmp_path))


def test_a_step_raising_inside_the_window_stops_the_trace(
    tiny_config_factory, tmp_path):
  config = tiny_config_factory(profile_steps=(1, 3))
  profiler = capture.TrainCapture.from_config(config, str(tmp_path),
                                              str(tmp_path / 'tb'))
  with pytest.raises(FloatingPointError):
    with profiler:
      profiler.step(1, jax.numpy.zeros(2), num_steps=4)
      assert profiler.tracing
      raise FloatingPointError('a step failed inside the window')
  assert not profiler.tracing
  # The profiler is free: a second trace starts (one running would refuse).
  jax.profiler.start_trace(str(tmp_path / 'next'))
  jax.profiler.stop_trace()


@pytest.mark.slow
def test_command_prints_the_split(tmp_path):
  out = tmp_path / 'trace'
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.profile',
       '--config=configs/demo.py', '--config.batch_size=4', '--steps=1',
       '--warmup=1', f'--out={out}', f'--json_out={tmp_path / "p.json"}'],
      cwd=ROOT, capture_output=True, text=True, check=True)
  lines = result.stdout.splitlines()
  for key in ('step_seconds', 'compute_seconds', 'collective_seconds',
              'exposed_collective_fraction'):
    assert any(re.fullmatch(rf'{key} [\d.e-]+', line) for line in lines), key
  assert any(line.startswith('all-gather ') for line in lines)
  with open(tmp_path / 'p.json') as f:
    assert json.load(f)['mode'] == 'tower'


@pytest.mark.slow
def test_unusable_out_is_a_clear_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.profile',
       '--config=configs/demo.py',
       f'--out={blocker}/trace'], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'error: --out: cannot create {blocker}/trace')
