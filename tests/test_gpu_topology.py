"""Compiling for NVIDIA GPU nodes described by JAX's CUDA plugin, no GPU.

XLA's target descriptions ship in the package; the plugin
(`pip install -e '.[gpu_compile]'`) describes nodes of those GPUs and
compiles the train step for them on the CPU host. Without the plugin the
tests that need it skip, saying so. Small nets and 2-4 GPUs a host keep the
compiles cheap.
"""

import os
import re
import subprocess
import sys

import pytest

from alexnet_jax import aot
from alexnet_jax import cli
from alexnet_jax import hardware
from alexnet_jax import models
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import compiled
from alexnet_jax.analysis import projection

pytestmark = pytest.mark.slow  # Compiles full-size nets for GPU nodes.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.model.input_size=67',
        '--config.model.conv_features=(8,16,24,24,16)',
        '--config.model.fc_features=(32,32)', '--config.model.num_classes=8',
        '--config.batch_size=8', '--config.eval_batch_size=8',
        '--config.num_devices=2']
needs_plugin = pytest.mark.skipif(
    not aot.gpu_compiler_installed(),
    reason="JAX's CUDA plugin is not installed: pip install -e "
    "'.[gpu_compile]' to compile for GPU nodes")


def _run(module, *args, env=None):
  return subprocess.run(
      [sys.executable, '-m', f'alexnet_jax.{module}', *args],
      env=env or dict(os.environ, PYTHONPATH=REPO), capture_output=True,
      text=True, check=False)


@pytest.mark.parametrize('gpu', sorted(aot.GPU_TARGETS))
def test_each_target_description_ships_and_names_its_memory(gpu):
  text = aot.gpu_target_config(gpu)
  assert 'collective_memory_granularity' not in text
  kind = re.search(r'device_description_str: "(.+)"', text).group(1)
  memory = int(re.search(r'device_memory_size: (\d+)', text).group(1))
  assert hardware.HBM_BYTES[kind] == memory
  assert hardware.PRESET_OF_DEVICE_KIND[kind] in hardware.HARDWARE
  raw = os.path.join(REPO, 'alexnet_jax', 'gpu_targets', aot.GPU_TARGETS[gpu])
  with open(raw) as f:  # Shipped as XLA wrote it, licence header included.
    assert f.read().startswith('# Copyright')


@pytest.mark.parametrize('name', ['h100', 'h100:8', 'h100:0x8', 'h100:2x8x1',
                                  'a100:two'])
def test_a_bad_gpu_topology_is_one_line_naming_the_flag(name):
  with pytest.raises(ValueError, match=r'^--topology: .* is not GPU:'):
    aot.topology_devices(name)


@needs_plugin
def test_nodes_are_described_without_a_gpu():
  devices = aot.topology_devices('h100:2x4')
  assert len(devices) == 8
  assert {d.device_kind for d in devices} == {'NVIDIA H100 80GB HBM3'}
  assert [sum(d.process_index == p for d in devices) for p in (0, 1)] == [4, 4]


def _compiled_for(config, batch: int, topology: str):
  """(config, compiled.measure's figures) for its mode and device count at
  global batch `batch` on GPU nodes `topology` (tests that use it need the
  plugin: needs_plugin skips them before their fixtures run)."""
  return config, compiled.measure(config, config.mode, config.num_devices,
                                  batch, aot.topology_devices(topology))


@pytest.fixture(scope='module')
def data_tower_on_nodes(tiny_config_factory):
  return _compiled_for(
      tiny_config_factory(mode='data_tower', num_devices=8), 8, 'h100:2x4')


@needs_plugin
def test_compiled_step_on_two_gpu_nodes(data_tower_on_nodes):
  config, measured = data_tower_on_nodes
  net = comms.net_shape(models.spec_from_config(config.model))
  expected = comms.analytical_figures('data_tower', 8, 8, net)
  data = comms.analytical_figures('data', 8, 8, net)
  assert measured['param_bytes'] == expected['param_bytes'] == (
      data['param_bytes'] / 2)
  # XLA's GPU compiler counts no FLOPs; the unoptimised program's do.
  assert 'unoptimised' in measured['flops_source']
  assert 0.7 < measured['flops'] / expected['flops'] < 1.3
  assert 0 < measured['peak_memory_bytes'] < measured['usable_bytes'] < (
      hardware.HBM_BYTES['NVIDIA H100 80GB HBM3'])
  lines = measured['placement']
  assert '  axis tower (size 2): within a host (NVLink)' in lines
  assert '  axis data (size 4): across hosts (network)' in lines
  # The tower exchange (groups of 2) stays on NVLink; the gradients and
  # the metrics' logits cross the network.
  exchange = [line for line in lines if 'groups of 2 ' in line]
  assert exchange and all('within a host (NVLink)' in line
                          for line in exchange)
  assert any('all-reduce' in line and 'across 2 hosts (network)' in line
             for line in lines)
  places = measured['collective_bytes_by_place']
  assert places['within_host'] > 0 and places['across_hosts'] > 0
  assert abs(sum(places.values()) - comms.total_bytes(measured['terms'])) <= 2
  assert measured['projection']['hardware'] == 'h100_sxm8'
  assert 0 < measured['projection']['step_s'] < 1
  assert lines[-1].endswith(': fits')


@pytest.fixture(scope='module')
def data_on_one_node(tiny_config_factory):
  """Mode data on a node of 2 H100s at batch 16."""
  return _compiled_for(tiny_config_factory(mode='data', num_devices=2), 16,
                       'h100:1x2')


@needs_plugin
def test_max_batch_fits_and_one_compiled_batch_above_it_does_not(
    data_on_one_node, monkeypatch):
  config, measured = data_on_one_node
  devices = aot.topology_devices('h100:1x2')
  base = measured['peak_memory_bytes']
  # GPUs whose allocator holds ten times the step at batch 16, so the
  # search ends at a small batch after a few small compiles.
  usable = 10 * base
  monkeypatch.setitem(hardware.HBM_BYTES, 'NVIDIA H100 80GB HBM3',
                      usable / hardware.GPU_ALLOCATOR_FRACTION + 1)
  largest, runs = compiled.max_batch(config, 'data', 2, 16, devices)
  assert largest > 16 and largest % 2 == 0
  assert runs[largest]['peak_memory_bytes'] <= usable
  above = [b for b, r in runs.items() if r['peak_memory_bytes'] > usable]
  assert above and min(above) > largest
  assert min(above) - largest <= 2 * max(1, largest // 2 // 100)


@needs_plugin
def test_plan_projects_whole_gpu_nodes_from_their_compiled_step(
    data_on_one_node):
  config, measured = data_on_one_node
  hw = hardware.HARDWARE['h100_sxm8']
  rate = projection.device_rate(hw)
  assert compiled.gpu_nodes('h100', 16, 8) == 'h100:2x8'
  assert compiled.project_on_nodes(config, 'data', 12, 24, hw, rate) is None
  assert compiled.project_on_nodes(
      config, 'data', 2, 16, hardware.HARDWARE['owt_k20'], rate) is None
  got = compiled.project_on_nodes(config, 'data', 2, 16, hw, rate)
  assert got['topology'] == 'h100:1x2'
  assert got['peak_memory_bytes'] == measured['peak_memory_bytes']
  # Within one node every collective runs on NVLink, at its bandwidth.
  nvlink = sum(c['bytes'] for c in measured['collectives']) / (
      hw.intra.gbytes_per_s * 1e9)
  assert nvlink <= got['critical_s'] + got['gradient_s'] < nvlink + 1e-3
  assert got['step_s'] == pytest.approx(
      got['compute_s'] + got['update_s'] + got['critical_s']
      + got['exposed_s'])


@needs_plugin
def test_cost_and_dry_run_print_the_gpu_figures():
  out = _run('tools.cost', f'--config={REPO}/configs/data_parallel.py',
             '--topology=h100:1x2', *TINY)
  assert out.returncode == 0, out.stderr[-2000:]
  values = dict(line.split(' ', 1) for line in out.stdout.splitlines()
                if re.fullmatch(r'[a-z_]+ [\d.e+-]+', line))
  assert float(values['flops_per_device']) > 0
  assert 0 < float(values['projected_step_seconds']) < 1
  assert 0 < int(values['peak_memory_bytes_per_device']) < (
      hardware.HBM_BYTES['NVIDIA H100 80GB HBM3'])
  assert 'within a host (NVLink)' in out.stdout
  dry = _run('main', f'--config={REPO}/configs/data_parallel.py', '--dry_run',
             '--topology=h100:1x2', *TINY)
  assert dry.returncode == 0, dry.stderr[-2000:]
  assert dry.stdout.startswith('dry run: mode data, 2 of 2 NVIDIA H100')
  assert 'projected step' in dry.stdout and ': fits' in dry.stdout


@needs_plugin
@pytest.mark.skipif(any(os.path.exists(p) for p in ('/dev/nvidia0',
                                                     '/dev/nvidiactl')),
                    reason='this host has a GPU: the plugin is meant to use it')
def test_programs_stay_on_the_cpu_and_quiet_with_the_plugin_installed(
    monkeypatch):
  monkeypatch.delenv('JAX_PLATFORMS')
  if cli.host_has_tpu():
    pytest.skip('this host has a TPU: JAX keeps its choice of platforms')
  assert cli.jax_platforms() == 'cpu'
  env = dict(os.environ, PYTHONPATH=REPO)
  for module, args in (('tools.summary', [f'--config={REPO}/configs/'
                                          'two_tower.py']),
                       ('tools.plan', ['--hardware=h100_sxm8',
                                       '--modes=data', '--devices=1,2',
                                       '--nocompile'])):
    out = _run(module, *args, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'cuDNN' not in out.stderr and 'Traceback' not in out.stderr, (
        out.stderr[-2000:])
