"""Compiling for TPU slices described by libtpu, and where meshes lie.

No TPU is needed: the TPU runtime library describes a slice's chips and
hosts, and the train step compiles for them ahead of time. One small slice
(v5e:2x4: 8 chips, 2 hosts of 2x2) and the small net keep this cheap; the
compiled program is shared by the module.
"""

import os
import subprocess
import sys

import pytest

from alexnet_jax import aot
from alexnet_jax import hardware
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import compiled
from alexnet_jax.analysis import hlo
from alexnet_jax.analysis import placement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLICE = 'v5e:2x4'
TINY = ['--config.model.input_size=67',
        '--config.model.conv_features=(8,16,24,24,16)',
        '--config.model.fc_features=(32,32)', '--config.model.num_classes=8',
        '--config.batch_size=8', '--config.eval_batch_size=8']


@pytest.fixture(scope='module')
def slice_devices():
  return aot.topology_devices(SLICE)


@pytest.fixture(scope='module')
def data_tower_on_slice(tiny_config_factory, slice_devices):
  config = tiny_config_factory(mode='data_tower', num_devices=8)
  return config, compiled.measure(config, 'data_tower', 8, 8, slice_devices)


def _run(module, *args):
  return subprocess.run(
      [sys.executable, '-m', f'alexnet_jax.{module}', *args],
      env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
      check=False)


def test_slice_is_described_without_a_tpu(slice_devices):
  assert len(slice_devices) == 8
  assert placement.hosts(slice_devices) == 2
  assert {d.device_kind for d in slice_devices} == {'TPU v5 lite'}


def test_tower_axis_stays_on_one_host_and_data_crosses_hosts(
    small_spec, slice_devices):
  strategy = parallel.create_strategy('data_tower', 8, small_spec, 8,
                                      devices=slice_devices)
  axes = {a['axis']: a for a in placement.axis_placement(strategy.mesh)}
  assert axes['tower']['within_host'] and axes['tower']['size'] == 2
  assert not axes['data']['within_host'] and axes['data']['size'] == 4
  # The paper's two towers: two neighbouring chips of one host.
  pair = parallel.create_strategy('tower', 2, small_spec, 8,
                                  devices=slice_devices).mesh.devices.flat
  assert pair[0].process_index == pair[1].process_index
  assert sum(abs(a - b) for a, b in zip(pair[0].coords, pair[1].coords)) == 1


def test_hybrid_2d_splits_fc_within_a_host_and_batch_across_hosts(
    small_spec, slice_devices):
  strategy = parallel.create_strategy('hybrid_2d', 8, small_spec, 8,
                                      devices=slice_devices)
  axes = {a['axis']: a for a in placement.axis_placement(strategy.mesh)}
  assert dict(strategy.mesh.shape) == {'data': 2, 'fc': 4}  # 4 chips a host.
  assert axes['fc']['within_host'] and not axes['data']['within_host']


def test_replica_groups_in_every_hlo_form():
  assert hlo.replica_groups(
      'all-gather(x), replica_groups={{0,1},{2,3}}, dimensions={0}', 4) == [
          [0, 1], [2, 3]]
  assert hlo.replica_groups(
      'all-reduce(x), replica_groups=[2,4]<=[4,2]T(1,0), to_apply=add',
      8) == [[0, 2, 4, 6], [1, 3, 5, 7]]
  assert hlo.replica_groups(
      'all-reduce(x), replica_groups=[1,4]<=[4], to_apply=add', 4) == [
          [0, 1, 2, 3]]
  assert hlo.replica_groups(
      'collective-permute(x), source_target_pairs={{0,1},{1,0}}', 2) == [
          [0, 1], [1, 0]]
  assert hlo.replica_groups('all-reduce(x), replica_groups={}', 3) == [
      [0, 1, 2]]


@pytest.mark.slow
def test_compiled_step_on_the_slice(data_tower_on_slice):
  config, measured = data_tower_on_slice
  net = comms.net_shape(models.spec_from_config(config.model))
  expected = comms.analytical_figures('data_tower', 8, 8, net)
  assert measured['device_kind'] == 'TPU v5 lite'
  assert measured['param_bytes'] == expected['param_bytes']
  assert 0 < measured['estimated_step_seconds'] < 1
  assert 0 < measured['peak_memory_bytes'] < hardware.HBM_BYTES['TPU v5 lite']
  lines = measured['placement']
  assert '  axis data (size 4): physical dimension y, across hosts' in lines
  assert '  axis tower (size 2): physical dimension x, within a host' in lines
  # The tower exchange (all-gathers of groups of 2) never leaves a host; the
  # gradient all-reduce over the data axis spans both hosts.
  gathers = [line for line in lines if 'all-gather' in line]
  assert gathers and all('groups of 2' in line and 'within a host' in line
                         for line in gathers)
  assert any('all-reduce' in line and 'groups of 4' in line
             and 'across 2 hosts' in line for line in lines)
  assert lines[-1].endswith(': fits')


def test_process_without_mesh_devices_gets_a_config_error(
    small_spec, slice_devices):
  other_host = [d for d in slice_devices if d.process_index == 1]
  strategy = parallel.create_strategy('data', 4, small_spec, 8,
                                      devices=other_host)
  with pytest.raises(ValueError, match='^config.num_devices: the 4-device'):
    strategy.process_batch_shard()


@pytest.mark.slow
def test_cost_cli_names_a_bad_topology():
  out = _run('tools.cost', f'--config={REPO}/configs/two_tower.py',
             '--topology=v9z:2x2')
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith(
      "error: --topology: 'v9z:2x2' cannot be described")


@pytest.mark.slow
def test_main_dry_run_compiles_and_exits_without_a_workdir():
  out = _run('main', f'--config={REPO}/configs/data_parallel.py',
             '--dry_run', *TINY)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0].startswith('dry run: mode data, 2 of ')
  assert any(line.startswith("mesh {'data': 2}") for line in lines)
  assert any('all-reduce' in line and 'within a host' in line for line in lines)
  # One eval step gives both protocols from one batch of base images.
  assert any(line.startswith('eval step (centre crop + 10 crops')
             for line in lines)


@pytest.mark.slow
def test_main_dry_run_rejects_a_mesh_the_batch_cannot_fill():
  out = _run('main', f'--config={REPO}/configs/data_parallel.py',
             '--dry_run', *TINY, '--config.batch_size=7')
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith(
      'error: config.batch_size: 7 does not split')
