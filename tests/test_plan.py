"""The GPU-cluster projection: its parts, and the command's output."""

import os
import re
import subprocess
import sys

import pytest

from alexnet_jax import hardware
from alexnet_jax import models
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import projection
from alexnet_jax.tools import cost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def owt_net():
  return comms.net_shape(models.VARIANTS['owt'])


def test_transfer_is_ring_latency_plus_bytes_over_the_link(owt_net):
  hw = hardware.HARDWARE['h100_sxm8']
  term = comms.Term('all-reduce', 'x', 800e6, 8)
  # 2 x 7 ring steps of 5 us, 2 x 7/8 x 800 MB received at 450 GB/s.
  assert projection.transfer_seconds(
      'data', term, 8, owt_net, hw) == pytest.approx(
          14 * 5e-6 + 1400e6 / 450e9)
  # Sixteen devices: the group spans two nodes and runs at the network's
  # 50 GB/s; the tower pair of data_tower stays on NVLink.
  wide = comms.Term('all-reduce', 'x', 800e6, 16)
  assert projection.transfer_seconds(
      'data', wide, 16, owt_net, hw) == pytest.approx(
          30 * 10e-6 + 2 * 15 / 16 * 800e6 / 50e9)
  pair = comms.Term('all-gather', 'x', 1e6, 2)
  paper = comms.net_shape(models.VARIANTS['paper'])
  assert projection.transfer_seconds('data_tower', pair, 16, paper,
                               hw) == pytest.approx(5e-6 + 0.5e6 / 450e9)


def test_tpu_slice_rings_take_two_ports_along_a_dimension_four_across():
  hw = hardware.HARDWARE['tpu_v5e']
  paper = comms.net_shape(models.VARIANTS['paper'])
  # data_tower's tower pair lies along one torus dimension within a host:
  # 2 of the chip's 4 ICI ports, 100 GB/s received.
  pair = comms.Term('all-gather', 'x', 1e6, 2)
  assert projection.transfer_seconds('data_tower', pair, 256, paper,
                               hw) == pytest.approx(1e-6 + 0.5e6 / 100e9)
  # The gradient all-reduce over all 256 chips spans both dimensions.
  wide = comms.Term('all-reduce', 'x', 800e6, 256)
  assert projection.transfer_seconds('data', wide, 256, paper,
                               hw) == pytest.approx(
                                   510 * 1e-6 + 2 * 255 / 256 * 800e6 / 200e9)


def test_one_device_reproduces_the_step_it_was_scaled_from(owt_net):
  hw = hardware.HARDWARE['owt_k20']
  rate = projection.flop_rate(hw, hw.step_seconds, hw.step_batch, owt_net)
  one = projection.project('data', 1, 128, owt_net, hw, rate)
  assert one['step_s'] == pytest.approx(0.3918, abs=1e-4)  # OWT: 98.05 h.
  # The update moves 5 x 244 MB at 208 GB/s.
  assert one['update_s'] == pytest.approx(5 * 244_403_360 / 208e9)


def test_gradients_hide_under_the_backward_pass_until_the_network(owt_net):
  hw = hardware.HARDWARE['h100_sxm8']
  rate = projection.flop_rate(hw, hw.step_seconds, hw.step_batch, owt_net)
  within = projection.project('data', 8, 8 * 128, owt_net, hw, rate)
  across = projection.project('data', 16, 16 * 128, owt_net, hw, rate)
  assert within['exposed_s'] == 0 < within['gradient_s']
  assert across['exposed_s'] == pytest.approx(
      across['gradient_s'] - 2 / 3 * across['compute_s'])
  assert across['images_per_sec'] < 2 * within['images_per_sec']


@pytest.mark.slow
def test_cli_prints_one_line_per_row_a_table_and_a_plot(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.plan', '--hardware=owt_k20',
       '--modes=hybrid,tower', '--devices=1,2,4', '--variant=paper',
       f'--out={tmp_path}'],
      env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
      check=True)
  rows = [line for line in out.stdout.splitlines() if line.startswith('plan ')]
  pattern = r'plan (\w+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)'
  assert [re.fullmatch(pattern, line).group(1, 2, 3) for line in rows] == [
      ('hybrid', '1', '128'), ('hybrid', '2', '256'), ('hybrid', '4', '512'),
      ('tower', '1', '128'), ('tower', '2', '256')]
  assert 'skipped: tower on 4: config.num_devices' in out.stderr
  assert '| mode | devices |' in out.stdout
  assert (tmp_path / 'plan.png').stat().st_size > 1000
  assert '![speedup](plan.png)' in (tmp_path / 'plan.md').read_text()


@pytest.mark.slow
def test_cli_rejects_a_bad_device_list():
  out = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.plan', '--hardware=owt_k20',
       '--devices=1,two'], env=dict(os.environ, PYTHONPATH=REPO),
      capture_output=True, text=True, check=False)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith('error: --devices:')


def test_cost_falls_back_to_the_preset_of_the_chip_it_compiled_for():
  paper = comms.net_shape(models.VARIANTS['paper'])
  assert cost._plan_projection('data', 16, 2048, paper, 'cpu') == {}
  got = cost._plan_projection('data', 16, 2048, paper,
                              'TPU v5 lite')['plan_projection']
  assert got['hardware'] == 'tpu_v5e'
  assert got['images_per_sec'] == pytest.approx(2048 / got['step_s'])
  hw = hardware.HARDWARE['tpu_v5e']
  one = projection.project('data', 1, 128, paper, hw,
                           projection.device_rate(hw))
  # Sixteen chips of 128 images each: more than one chip, less than ideal.
  assert one['images_per_sec'] < got['images_per_sec'] < (
      16 * one['images_per_sec'])


@pytest.mark.parametrize('preset,peak', [('h100_sxm8', 495e12),
                                         ('tpu_v5e', 197e12)])
def test_assumed_one_device_step_runs_at_the_stated_share_of_peak(preset,
                                                                  peak):
  paper = comms.net_shape(models.VARIANTS['paper'])
  figures = comms.analytical_figures('single', 1, 128, paper)
  assert (hardware.PAPER_STEP_FLOPS, hardware.PAPER_PARAM_BYTES) == (
      figures['flops'], figures['param_bytes'])
  hw = hardware.HARDWARE[preset]
  assert 'ASSUMED 30%' in hw.sources
  rate = projection.flop_rate(hw, hw.step_seconds, hw.step_batch, paper)
  assert rate == pytest.approx(0.30 * peak)
