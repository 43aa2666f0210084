"""The cost model equals what the compiler produced, term by term.

If the model, a mode or the train step changes its communication, these
tests fail until `alexnet_jax/tools/cost.py` says why.
"""

import os
import subprocess
import sys

import pytest

from alexnet_jax import models
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import compiled
from alexnet_jax.tools import cost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize('mode,devices,batch,fc_shards', [
    ('tower', 2, 8, None), ('data', 2, 8, None), ('hybrid', 2, 8, None),
    ('data_tower', 4, 8, None), ('single', 1, 8, None),
    ('hybrid_2d', 4, 8, 2)])
def test_measured_collective_bytes_equal_the_analytical_model(
    tiny_config_factory, mode, devices, batch, fc_shards):
  config = tiny_config_factory(mode=mode, num_devices=devices)
  net = comms.net_shape(models.spec_from_config(config.model))
  result = cost.report(mode, devices, batch, net,
                       compiled.measure(config, mode, devices, batch,
                                    fc_shards=fc_shards))
  measured, expected = result['measured'], result['analytical']
  assert measured['collective_bytes'] == expected['collective_bytes']
  by_kind = {}
  for term in result['analytical_terms']:
    by_kind[term['kind']] = by_kind.get(term['kind'], 0) + term['bytes']
  # Bytes per kind; counts differ where XLA combines ops into one tuple.
  assert {k: b for k, (_, b) in measured['collectives_by_kind'].items()} == {
      k: round(b) for k, b in by_kind.items()}
  assert measured['param_bytes'] == expected['param_bytes']
  # The momentum, plus the optimizer's injected scalar hyperparameters.
  assert 0 <= measured['opt_state_bytes'] - expected['opt_state_bytes'] <= 64
  assert 0.7 < measured['flops'] / expected['flops'] < 1.3


def test_data_mode_all_reduces_every_parameter(tiny_config_factory):
  config = tiny_config_factory(mode='data', num_devices=2)
  net = comms.net_shape(models.spec_from_config(config.model))
  measured = compiled.measure(config, 'data', 2, 8)
  reduced = sum(t.result_bytes for t in measured['terms']
                if t.kind == 'all-reduce')
  params = (net.conv_params + net.fc_params) * 4
  assert params <= reduced <= params + 3 * 4  # Every gradient + 3 metrics.


def test_paper_tower_exchange_is_the_spec_figure():
  net = comms.net_shape(models.VARIANTS['paper'])
  terms = comms.analytical_terms('tower', 2, 128, net)
  per_image = 30_336 * 4  # Bytes per image per tower, each way (docs/paper.md).
  forward = sum(t.bytes for t in terms if t.what.startswith('fwd'))
  backward = sum(t.bytes for t in terms if t.what.startswith('bwd'))
  assert backward == 128 * per_image
  assert forward == 128 * (per_image + 500 * 4)  # And the logits.
  data = comms.total_bytes(comms.analytical_terms('data', 2, 128, net))
  # docs/paper.md: "about 8 times".
  assert 7.5 < data / (forward + backward) < 8.0
  assert net.macs == 724_406_816


def test_received_bytes_use_ring_factors():
  assert comms.received_bytes('all-gather', 800, 8) == 700
  assert comms.received_bytes('reduce-scatter', 100, 8) == 700
  assert comms.received_bytes('all-reduce', 800, 8) == 1400
  assert comms.received_bytes('all-reduce', 800, 1) == 0


@pytest.mark.slow
def test_cli_plans_past_the_devices_we_have():
  out = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.cost',
       f'--config={REPO}/configs/data_parallel.py', '--devices=64',
       '--batch_size=8192', '--analytical_only', '--link_gbps=100',
       '--device_tflops=100'],
      env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
      check=True).stdout.splitlines()
  assert out[-2].startswith('collective_bytes_per_step ')
  assert out[-1] == 'param_bytes_per_device 243860896'
  # Ring all-reduce of every gradient (2 x 63/64 of it), the float32 logits
  # of 8192 images x 1000 classes gathered for top-k (63/64 of them) and the
  # all-reduce of the 3 metric means.
  params = 60_965_224 * 4
  expected = (2 * 63 / 64 * params + 63 / 64 * 8192 * 1000 * 4
              + 2 * 63 / 64 * 3 * 4)
  assert out[-2] == f'collective_bytes_per_step {round(expected)}'
  assert any('communication' in line for line in out)
