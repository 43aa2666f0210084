"""The report reads workdirs as main and the cost tool write them."""

import json
import os
import subprocess
import sys

import pytest

from alexnet_jax import hardware
from alexnet_jax.analysis import projection
from alexnet_jax.tools import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _workdir(path, mode, devices, errors, rates, cost=True):
  """A workdir with 2 train lines per eval, 10 steps of 0.5 s apart."""
  path.mkdir()
  (path / 'config.json').write_text(json.dumps(
      {'mode': mode, 'num_devices': devices, 'batch_size': 64}))
  lines = []
  for i, (error, rate) in enumerate(zip(errors, rates)):
    step = 10 * (i + 1)
    lines.append({'step': step, 'train/loss': 1.0, 'perf/step_time': 0.5,
                  'perf/images_per_sec': rate})
    lines.append({'step': step, 'eval/top1_error': error,
                  'eval/top5_error': error / 2})
  (path / 'metrics.jsonl').write_text(
      '\n'.join(json.dumps(line) for line in lines) + '\n')
  if cost:
    (path / 'cost.json').write_text(json.dumps({'measured': {
        'collective_bytes': 3 * 2**20, 'peak_memory_bytes': 5 * 2**20}}))
  return str(path)


def test_table_and_plots(tmp_path):
  runs = [_workdir(tmp_path / 'tower', 'tower', 2, [0.9, 0.5, 0.6],
                   [1000, 80, 100]),
          _workdir(tmp_path / 'data', 'data', 2, [0.8, 0.7], [5, 50],
                   cost=False)]
  text = report.write_report(runs, str(tmp_path / 'out'), intro='Hello.')
  rows = {line.split(' | ')[0]: line.split(' | ')
          for line in text.splitlines() if line.startswith('| ')}
  # name, mode, devices, batch, images/s, final, best, top-5, MiB, MiB.
  assert rows['| tower'][1:] == ['tower', '2', '64', '90.0', '0.600',
                                 '0.500', '0.300', '3.0', '5.0 |']
  assert rows['| data'][4:7] == ['50.0', '0.700', '0.700']
  assert rows['| data'][8:] == ['-', '- |']
  assert 'Hello.' in text
  for name in ('eval_error_vs_step.png', 'eval_error_vs_time.png',
               'images_per_sec.png'):
    assert (tmp_path / 'out' / name).read_bytes()[:4] == b'\x89PNG'
    assert f'({name})' in text


def test_wall_time_excludes_evaluation(tmp_path):
  run = report.load_run(_workdir(tmp_path / 'r', 'data', 2, [0.5, 0.4],
                                 [10, 10]))
  assert run.wall_time_at() == {10: 5.0, 20: 10.0}


def _profiled(path, device_kind, step, compute, collective, exposed):
  (path / 'profile.json').write_text(json.dumps({
      'device_kind': device_kind, 'step_seconds': step,
      'compute_seconds': compute, 'collective_seconds': collective,
      'exposed_collective_fraction': exposed}))


def test_profiled_runs_sit_beside_cost_and_plan(tmp_path):
  cpu = _workdir(tmp_path / 'cpu', 'tower', 2, [0.5], [10])
  _profiled(tmp_path / 'cpu', 'cpu', 0.004, 0.003, 0.0015, 0.25)
  gpu = _workdir(tmp_path / 'gpu', 'data', 2, [0.5], [10], cost=False)
  config = json.loads((tmp_path / 'gpu' / 'config.json').read_text())
  (tmp_path / 'gpu' / 'config.json').write_text(json.dumps(
      config | {'model': {'variant': 'paper'}}))
  _profiled(tmp_path / 'gpu', 'NVIDIA H100 80GB HBM3', 0.02, 0.015, 0.004,
            0.1)
  plain = _workdir(tmp_path / 'plain', 'data', 2, [0.5], [10])
  text = report.write_report([cpu, gpu, plain], str(tmp_path / 'out'))
  rows = {line.split(' | ')[0]: line.split(' | ')
          for line in text.split('Measured per step')[0].split(
              'step ms | compute ms')[1].splitlines() if line.startswith('| ')}
  assert set(rows) == {'| cpu', '| gpu'}
  assert rows['| cpu'][4:] == ['4.00', '3.00', '1.50', '25.0%', '3.0', '- |']
  hw = hardware.HARDWARE['h100_sxm8']
  expected = projection.project('data', 2, 64,
                                projection.variant_net('paper'), hw,
                                projection.device_rate(hw))['step_s']
  assert rows['| gpu'][-1] == f'{expected * 1e3:.2f} |'
  assert rows['| gpu'][-2] == '-'


@pytest.mark.slow
def test_cli(tmp_path):
  run = _workdir(tmp_path / 'r', 'single', 1, [0.5], [10])
  subprocess.run([sys.executable, '-m', 'alexnet_jax.tools.report', run,
                  f'--out={tmp_path}/out'], check=True, capture_output=True,
                 env=dict(os.environ, PYTHONPATH=REPO))
  assert '| r | single |' in (tmp_path / 'out' / 'README.md').read_text()


def _compiled_slice(path):
  path.write_text(json.dumps({
      'mode': 'data_tower', 'devices': 16, 'batch_size': 2048,
      'analytical': {'collective_bytes': 4 * 2**20},
      'measured': {'collective_bytes': 3 * 2**20,
                   'peak_memory_bytes': 2**30, 'device_kind': 'TPU v5 lite',
                   'placement': ["mesh {'data': 8, 'tower': 2} on 16 TPU v5 "
                                 'lite devices, 4 hosts']}}))
  return path


def _scaling(tmp_path, *flags):
  return subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.report', f'--out={tmp_path}',
       *flags], env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
      text=True)


@pytest.mark.slow
def test_scaling_study_names_winners_crossovers_and_compiled_slices(
    tmp_path):
  compiled = _compiled_slice(tmp_path / 'slice.json')
  out = _scaling(tmp_path / 'study', '--scaling=owt_k20,tpu_v5e',
                 f'--cost_json={compiled}')
  assert out.returncode == 0, out.stderr
  text = (tmp_path / 'study' / 'README.md').read_text()
  assert text == out.stdout.rstrip('\n') + '\n'
  assert text.count('Projected, not measured') == 2
  gpus, tpus = text.split('## tpu_v5e')
  rows = [line.split(' | ') for line in gpus.splitlines()
          if line.startswith('| 2 |')]
  # Two devices (per-device batch): every mode runs, and the winner is the
  # mode of the highest images/s, which is the one in bold.
  modes = ('data', 'tower', 'data_tower', 'hybrid', 'hybrid_2d')
  rates = {mode: float(cell.strip('*').replace(',', ''))
           for mode, cell in zip(modes, rows[0][1:6])}
  winner = rows[0][-1].rstrip(' |')
  assert winner == max(modes, key=rates.get)
  assert rows[0][1 + modes.index(winner)].startswith('**')
  # The GPU study stops at 64 devices, the TPU slice's at 256 chips.
  assert '| 128 |' not in gpus and '| 256 |' in tpus
  # The compiled slice: its bytes beside the model's, and the projected
  # images/s of the same mode, chips and batch.
  row = next(line for line in tpus.splitlines()
             if line.startswith('| data_tower |'))
  assert row.startswith('| data_tower | 16 | 4 | 2048 | 3.0; 4.0 | 1.00 | '
                        '6.2% | ')
  # 2048 images on 16 chips is 128 per chip: the per-device-batch table's
  # data_tower cell at 16 chips.
  per_chip = next(line for line
                  in tpus.split('### Fixed global')[0].splitlines()
                  if line.startswith('| 16 |'))
  assert row.split(' | ')[-1].rstrip(' |') == (
      per_chip.split(' | ')[3].strip('*'))
  for hw in ('owt_k20', 'tpu_v5e'):
    png = tmp_path / 'study' / f'{hw}_per_device_batch.png'
    assert png.stat().st_size > 1000


@pytest.mark.slow
def test_compiled_slices_need_a_tpu_preset(tmp_path):
  compiled = _compiled_slice(tmp_path / 'slice.json')
  out = _scaling(tmp_path / 'study', '--scaling=owt_k20',
                 f'--cost_json={compiled}')
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith(
      'error: --cost_json: compiled TPU slices need a TPU preset')
