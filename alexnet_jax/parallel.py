"""Execution modes: which mesh, which layout, which parameter shardings.

A mode is a value chosen in config (`config.mode`), never a fork of the
model or the trainer:

  single      one device.
  data        parameters replicated, batch split over mesh axis `data`.
  tower       the paper: one tower per device on mesh axis `tower`; every
              tower parameter lives only on its own device.
  data_tower  a 2-D mesh `data` x `tower`: towers split as in `tower`,
              batch split over `data`; how the two-tower net scales.
  hybrid      OWT: conv layers data-parallel, FC layers' output features
              split over the same `data` axis (model-parallel).
  hybrid_2d   the hybrid at scale: a 2-D mesh `data` x `fc`, `fc` within a
              host. Convs data-parallel over every device; FC features
              split over `fc` only, each host's FC layers seeing that host's
              batch; FC gradients all-reduced over `data`.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from alexnet_jax import models

MODES = ('single', 'data', 'tower', 'data_tower', 'hybrid', 'hybrid_2d')


def request_cpu_devices(num_devices: int) -> None:
  """Simulates `num_devices` CPU devices if JAX has not started yet.

  Call before anything asks JAX for devices. On a GPU or TPU host this only
  affects the (unused) CPU backend.
  """
  try:
    jax.config.update('jax_num_cpu_devices', max(
        num_devices, jax.config.jax_num_cpu_devices))
  except RuntimeError:
    pass  # Backends already up; `create_strategy` checks the device count.


# XLA:CPU hands convolutions to YNNPACK by default. At AlexNet's layer
# shapes (batch 32, 2-core AVX2) its convolutions ran 1.1-1.9x slower
# forward and up to 9x slower for kernel gradients than XLA's own (Eigen)
# ones, so only dots go to YNNPACK. LLVM's -O2 rather than XLA's default
# -O3: the same bits in every program we checked, a step as fast, and the
# random initialiser (one threefry per parameter) compiles in 1.5 s, not 7.
_CPU_COMPILER_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type':
        'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT',
    'xla_backend_optimization_level': 2}


def compiler_options() -> dict[str, str | int] | None:
  """XLA options for the compiled steps, for the default backend."""
  if jax.default_backend() == 'cpu':
    return dict(_CPU_COMPILER_OPTIONS)
  return None


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A mesh and how the model and the batch are laid out on it."""
  mode: str
  mesh: Mesh
  layout: models.Layout

  @property
  def batch_spec(self) -> P:
    return P(self.layout.batch_axis)

  @property
  def data_shards(self) -> int:
    return self.layout.batch_shards

  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, self.batch_spec)

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def process_batch_shard(self) -> tuple[int, int]:
    """(index, count): the slice of every global batch this process loads.

    Processes whose devices hold the same rows load the same examples: in
    mode tower on two hosts both towers need the whole batch, so the input
    must be sharded by data shard, not by process.
    """
    rows = sorted({index[0].start or 0 for index in
                   self.batch_sharding().addressable_devices_indices_map(
                       (self.data_shards,)).values()})
    if not rows:
      raise ValueError(
          f'config.num_devices: the {self.mesh.devices.size}-device mesh '
          f'holds none of the devices of process {jax.process_index()} '
          f'({jax.process_count()} processes, {jax.device_count()} devices '
          f'in all); set it to use every process or start fewer processes')
    if rows != list(range(rows[0], rows[0] + len(rows))):
      raise ValueError(f'config.mode: process {jax.process_index()} holds '
                       f'non-contiguous batch shards {rows}')
    return rows[0] // len(rows), self.data_shards // len(rows)

  def param_spec(self, path: tuple[str, ...], ndim: int) -> P:
    """Towers split on axis 0; FC output features on the last axis."""
    dims = [None] * ndim
    dims[0] = self.layout.tower_axis
    if path[0] in models.FC_LAYERS and self.layout.fc_axis:
      dims[-1] = self.layout.fc_axis
    return P(*dims)

  def param_specs(self, params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, x: self.param_spec(
            tuple(k.key for k in path), len(x.shape)), params)

  def param_shardings(self, params: Any) -> Any:
    return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec),
                        self.param_specs(params))


def _mesh_shape(mode: str, num_devices: int, towers: int, fc_shards: int = 1):
  return {
      'single': ((1,), ('data',)),
      'data': ((num_devices,), ('data',)),
      'tower': ((towers,), ('tower',)),
      'data_tower': ((num_devices // towers, towers), ('data', 'tower')),
      'hybrid': ((num_devices,), ('data',)),
      'hybrid_2d': ((num_devices // fc_shards, fc_shards), ('data', 'fc')),
  }[mode]


def validate(mode: str, num_devices: int, spec: models.AlexNetSpec,
             batch_size: int, available: int, fc_shards: int = 1) -> None:
  """Raises a one-line ValueError naming the config key at fault.

  `fc_shards`: the `fc` axis of mode hybrid_2d.
  """
  towers = spec.num_towers
  if mode not in MODES:
    raise ValueError(f'config.mode: unknown {mode!r}; choose from {MODES}')
  if num_devices < 1 or num_devices > available:
    raise ValueError(f'config.num_devices: {num_devices} requested but '
                     f'{available} devices exist')
  if mode == 'single' and num_devices != 1:
    raise ValueError(f'config.num_devices: mode single uses 1 device, '
                     f'not {num_devices}')
  if mode == 'tower' and num_devices != towers:
    raise ValueError(
        f'config.num_devices: mode tower puts one tower per device, so it '
        f'needs {towers} devices (config.model.num_towers), not '
        f'{num_devices}; use mode data_tower for more')
  if mode == 'data_tower' and (num_devices % towers or towers < 2):
    raise ValueError(f'config.num_devices: mode data_tower needs a multiple '
                     f'of the {towers} towers (at least 2), not {num_devices}')
  data_shards = _mesh_shape(mode, num_devices, towers)[0][0]
  if mode in ('data', 'data_tower', 'hybrid') and batch_size % data_shards:
    raise ValueError(f'config.batch_size: {batch_size} does not split over '
                     f'the {data_shards}-way data axis')
  if mode == 'hybrid_2d' and (fc_shards < 1 or num_devices % fc_shards):
    raise ValueError(f'config.num_devices: {num_devices} devices do not form '
                     f'rows of {fc_shards} (the fc axis of mode hybrid_2d)')
  if mode == 'hybrid_2d' and batch_size % num_devices:
    raise ValueError(f'config.batch_size: {batch_size} does not split over '
                     f'the {num_devices} devices')
  if mode in ('hybrid', 'hybrid_2d'):
    split = num_devices if mode == 'hybrid' else fc_shards
    for width in (*spec.fc_features, spec.num_classes // towers):
      if width % split:
        raise ValueError(
            f'config.num_devices: {mode} mode splits FC layers of width '
            f'{width} per tower {split} ways, which does not divide it')


def placement_order(devices: Sequence[Any]) -> list[Any]:
  """Devices host by host, neighbours next to each other within a host.

  Mesh axes are filled last axis fastest, so in this order the `tower` axis
  (last) joins chips of one host, linked directly (ICI neighbours on a TPU
  host, NVLink on a GPU node), and the `data` axis runs across hosts. TPU
  chips sort by their physical coordinates (z, y, x), others by id.
  """
  def key(device):
    coords = tuple(reversed(getattr(device, 'coords', None) or ()))
    return (device.process_index, coords,
            getattr(device, 'core_on_chip', 0), device.id)
  return sorted(devices, key=key)


def devices_per_host(devices: Sequence[Any], num_devices: int) -> int:
  """The `fc` axis of hybrid_2d: as many of the first host's devices as
  divide `num_devices`."""
  first = devices[0].process_index
  return math.gcd(sum(d.process_index == first for d in devices[:num_devices]),
                  num_devices)


def create_strategy(mode: str, num_devices: int, spec: models.AlexNetSpec,
                    batch_size: int, devices: Sequence[Any] | None = None,
                    fc_shards: int | None = None) -> Strategy:
  """Validates the request and builds the mesh and layout for `mode`.

  `devices`: where the mesh goes (default `jax.devices()`); a TPU
  topology's device descriptions compile ahead of time without a TPU.
  `fc_shards`: hybrid_2d's `fc` axis (default: the devices of one host).
  """
  devices = placement_order(jax.devices() if devices is None else devices)
  if fc_shards is None:
    fc_shards = devices_per_host(devices, num_devices) if devices else 1
  validate(mode, num_devices, spec, batch_size, len(devices), fc_shards)
  shape, names = _mesh_shape(mode, num_devices, spec.num_towers, fc_shards)
  mesh = Mesh(np.array(devices[:math.prod(shape)]).reshape(shape), names,
              axis_types=(AxisType.Explicit,) * len(shape))
  sizes = dict(zip(names, shape))
  layout = models.Layout()
  if mode in ('data', 'data_tower', 'hybrid'):
    layout = dataclasses.replace(layout, batch_axis='data',
                                 batch_shards=sizes['data'])
  if mode in ('tower', 'data_tower'):
    layout = dataclasses.replace(layout, tower_axis='tower',
                                 tower_shards=sizes['tower'])
  if mode == 'hybrid':
    layout = dataclasses.replace(layout, fc_axis='data',
                                 fc_shards=sizes['data'])
  if mode == 'hybrid_2d':
    layout = models.Layout(batch_axis=('data', 'fc'), batch_shards=num_devices,
                           fc_axis='fc', fc_shards=fc_shards)
  return Strategy(mode, mesh, layout)


def spec_of(config: Any) -> models.AlexNetSpec:
  return models.spec_from_config(config.model)


def strategy_from_config(config: Any) -> Strategy:
  return create_strategy(config.mode, config.num_devices, spec_of(config),
                         config.batch_size)


def make_apply(spec: models.AlexNetSpec, strategy: Strategy,
               params_like: Any, *, train: bool) -> Callable:
  """(params, images, dropout_rng) -> logits for global arrays.

  Under every mode but `single` this is a `jax.shard_map` of the model with
  the strategy's layout; logits come back split like the batch.
  """
  model = models.AlexNet(spec, strategy.layout)

  def apply(params, images, rng):
    return model.apply({'params': params}, images, train=train,
                       rngs={'dropout': rng} if train else {})

  if strategy.mode == 'single':
    return apply
  return jax.shard_map(
      apply, mesh=strategy.mesh,
      in_specs=(strategy.param_specs(params_like), strategy.batch_spec, P()),
      out_specs=strategy.batch_spec)


@functools.cache
def _init_fn(spec: models.AlexNetSpec):
  model = models.AlexNet(spec)
  return lambda rng: model.init(
      rng, jax.numpy.zeros((1, spec.input_size, spec.input_size, 3)),
      train=False)['params']


def abstract_params(spec: models.AlexNetSpec,
                    strategy: Strategy | None = None) -> Any:
  """Global parameter shapes and dtypes, without allocating them.

  With `strategy`, each also carries the sharding it has under that
  strategy: what a restore or an ahead-of-time compilation needs.
  """
  shapes = jax.eval_shape(_init_fn(spec), jax.random.key(0))
  if strategy is None:
    return shapes
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes, strategy.param_shardings(shapes))


def init_params(spec: models.AlexNetSpec, strategy: Strategy,
                rng: jax.Array) -> Any:
  """Global parameters, created directly in their sharded placement.

  The values depend only on `rng`, never on the mode.
  """
  shardings = strategy.param_shardings(abstract_params(spec))
  return jax.jit(_init_fn(spec), out_shardings=shardings,
                 compiler_options=compiler_options())(rng)
