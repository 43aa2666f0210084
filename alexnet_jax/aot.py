"""Ahead-of-time compilation: the train and eval steps compiled for a mesh
this process may not be able to run (more devices than it has, a TPU slice
described by the TPU runtime with no TPU present, or NVIDIA GPU nodes
described by JAX's CUDA plugin with no GPU present), from abstract state,
with nothing allocated. `main --dry_run`, `cost` and `plan` compile
through here.
"""

import contextlib
import importlib.resources
import importlib.util
import math
import os
import re
from typing import Any, Iterator
import warnings

import jax
from jax._src.lib import _jax as xla_extension  # XLA's HLO cost analysis.
from jax.experimental import topologies
import jax.extend

from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax.data import device

# Set before libtpu loads: several processes may hold it on a machine with no
# TPU (the lockfile is for sharing real chips), and with no TPU metadata
# server it should not look for one, for worker hostnames or for this
# host's accelerator type (any valid type quiets it; the topology named
# in `topology_devices` is what is described).
_LIBTPU_ENV = {'ALLOW_MULTIPLE_LIBTPU_LOAD': '1', 'TPU_SKIP_MDS_QUERY': '1',
               'TPU_WORKER_HOSTNAMES': 'localhost',
               'TPU_ACCELERATOR_TYPE': 'v5litepod-1'}


def prepare_libtpu() -> None:
  """Environment for describing TPU topologies on a machine without TPUs."""
  for key, value in _LIBTPU_ENV.items():
    os.environ.setdefault(key, value)


# `--topology=GPU:HOSTSxGPUS` names -> XLA's description of that GPU,
# shipped in alexnet_jax/gpu_targets (its README names the source).
GPU_TARGETS = {'a100': 'a100_sxm_80.txtpb', 'h100': 'h100_sxm.txtpb',
               'h200': 'h200.txtpb'}


# Fields of XLA's newer descriptions that the pinned jaxlib's
# GpuTargetConfigProto lacks (it rejects the whole description): dropped as
# a description loads, so the shipped files stay XLA's own.
_UNSUPPORTED_TARGET_FIELDS = ('collective_memory_granularity',)


GPU_COMPILE_HINT = "install the GPU compiler: pip install -e '.[gpu_compile]'"


def gpu_compiler_installed() -> bool:
  """Whether JAX's CUDA plugin, which compiles for described GPUs, is here."""
  return importlib.util.find_spec('jax_plugins.xla_cuda12') is not None


def gpu_target_config(gpu: str) -> str:
  """XLA's target description (GpuTargetConfigProto text) of a GPU of
  `GPU_TARGETS`, less the fields this jaxlib cannot read."""
  text = (importlib.resources.files('alexnet_jax') / 'gpu_targets'
          / GPU_TARGETS[gpu]).read_text()
  for field in _UNSUPPORTED_TARGET_FIELDS:
    text = re.sub(rf'^\s*{field}:.*\n', '', text, flags=re.M)
  return text


def is_gpu_topology(name: str) -> bool:
  return name.split(':')[0].lower() in GPU_TARGETS


def gpu_topology(name: str) -> tuple[str, int, int]:
  """(gpu, hosts, GPUs per host) of a name like `h100:2x8`."""
  match = re.fullmatch(r'(\w+):(\d+)x(\d+)', name.strip())
  if not match or not is_gpu_topology(name) or min(
      int(match.group(2)), int(match.group(3))) < 1:
    raise ValueError(f'--topology: {name!r} is not GPU:HOSTSxGPUS with GPU '
                     f'one of {sorted(GPU_TARGETS)} (e.g. h100:2x8: two '
                     'hosts of 8 GPUs)')
  return match.group(1).lower(), int(match.group(2)), int(match.group(3))


def _gpu_topology_devices(name: str) -> list[Any]:
  """The GPUs of `HOSTS` nodes of `GPUS` each, described by the CUDA plugin.

  Each host is its own NVLink domain (the plugin's partition), as on
  A100, H100 and H200 nodes; hosts are joined by the network.
  """
  gpu, hosts, per_host = gpu_topology(name)
  if not gpu_compiler_installed():
    raise ValueError(f'--topology: {name!r} cannot be described (no JAX '
                     f'CUDA plugin); {GPU_COMPILE_HINT}')
  try:
    topology = topologies.get_topology_desc(
        platform='cuda', target_config=gpu_target_config(gpu),
        topology=f'{hosts}x1x{per_host}')
  except Exception as error:  # pylint: disable=broad-except
    message = str(error).strip().splitlines()[0] if str(error) else repr(error)
    raise ValueError(f'--topology: {name!r} cannot be described '
                     f'({message})') from None
  return list(topology.devices)


def topology_devices(name: str) -> list[Any]:
  """The chips of a TPU slice named like `v5e:4x4`, or the GPUs of nodes
  named like `h100:2x8` (no TPU or GPU needed).

  Raises a one-line ValueError naming --topology when the name is unknown
  or the TPU runtime library (or the CUDA plugin) is missing.
  """
  if is_gpu_topology(name):
    return _gpu_topology_devices(name)
  prepare_libtpu()
  try:
    topology = topologies.get_topology_desc(topology_name=name,
                                            platform='tpu')
  except Exception as error:  # pylint: disable=broad-except
    message = str(error).strip().splitlines()[0] if str(error) else repr(error)
    if 'tpu' in message.lower() and 'plugin' in message.lower():
      message += "; install the TPU runtime: pip install -e '.[tpu]'"
    raise ValueError(f'--topology: {name!r} cannot be described '
                     f'({message})') from None
  return list(topology.devices)


def bytes_per_device(tree: Any) -> int:
  """Bytes of one device's shards of a tree of global arrays."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def abstract_train_state(spec, strategy, tx) -> Any:
  """The train state's shapes and shardings, nothing allocated: what ahead-
  of-time compilation for devices this process cannot reach needs."""
  params = parallel.abstract_params(spec, strategy)
  with jax.set_mesh(strategy.mesh), quiet_cache_reads(strategy.mesh):
    init = jax.jit(tx.init).lower(params).compile()
  opt_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(tx.init, params), init.output_shardings)
  step = jax.ShapeDtypeStruct((), jax.numpy.int32,
                              sharding=strategy.replicated())
  return steps.TrainState(step, params, opt_state)


def compile_train_step(config: Any, strategy: Any, batch: int) -> tuple[
    Any, Any]:
  """(compiled train step, abstract state) for a global batch of `batch`."""
  lowered, state = lower_train_step(config, strategy, batch)
  with jax.set_mesh(strategy.mesh), quiet_cache_reads(strategy.mesh):
    return lowered.compile(), state


def lower_train_step(config: Any, strategy: Any, batch: int) -> tuple[
    Any, Any]:
  """(lowered train step, abstract state): the unoptimised program."""
  spec = parallel.spec_of(config)
  tx = optim.create_optimizer(config.optimizer,
                              parallel.abstract_params(spec))
  state = abstract_train_state(spec, strategy, tx)
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype,
                             sharding=strategy.replicated())
  batch_args = {k: jax.ShapeDtypeStruct(shape, dtype,
                                        sharding=strategy.batch_sharding())
                for k, (shape, dtype) in device.train_batch_shapes(
                    batch, spec.input_size).items()}
  with jax.set_mesh(strategy.mesh), quiet_cache_reads(strategy.mesh):
    step = steps.make_train_step(spec, strategy, tx, state,
                                 device.Normalization.from_config(config))
    return step.lower(state, batch_args, 0.01, key), state


def unoptimised_flops(lowered: Any) -> float:
  """FLOPs of a lowered program before XLA optimises it, counted by XLA's
  HLO cost analysis on the CPU: what a target whose compiler reports none
  (XLA's GPU compiler) is costed by. The model runs per device inside
  `jax.shard_map`, so its FLOPs are one device's."""
  module = lowered.compiler_ir('hlo').as_hlo_module()
  return xla_extension.hlo_module_cost_analysis(
      jax.extend.backend.get_backend('cpu'), module)['flops']


@contextlib.contextmanager
def quiet_cache_reads(mesh: Any) -> Iterator[None]:
  """Silences JAX's persistent-cache read warnings while compiling for
  devices this process has no client for (a described TPU slice): such
  programs are written to the cache but cannot be loaded back, so every
  read fails harmlessly and the program is compiled again."""
  reachable = set(jax.devices()) | set(jax.devices('cpu'))
  with warnings.catch_warnings():
    if not set(mesh.devices.flat) <= reachable:
      warnings.filterwarnings(
          'ignore', message='Error reading persistent compilation cache')
    yield


def usable_estimate(analysis: dict[str, Any]) -> float | None:
  """XLA's step-time estimate (`optimal_seconds`), or None where it has
  none or a negative one (the TPU compiler's for the full-size net: it
  cannot cost every operation)."""
  seconds = analysis.get('optimal_seconds')
  return seconds if seconds is not None and seconds > 0 else None


def peak_memory(compiled: Any) -> int:
  """Peak bytes per device of a compiled program."""
  memory = compiled.memory_analysis()
  return memory.peak_memory_in_bytes or (
      memory.argument_size_in_bytes + memory.output_size_in_bytes
      - memory.alias_size_in_bytes + memory.temp_size_in_bytes)


def jax_on_cpu() -> None:
  """The host's own backend is the CPU when compiling for a described
  slice: no process should try to claim a TPU it does not need."""
  jax.config.update('jax_platforms', 'cpu')


def compile_devices(num_devices: int) -> list[Any]:
  """This host's devices if it has enough, else simulated CPU devices: the
  collectives and memory of a mesh larger than the host can still be read."""
  parallel.request_cpu_devices(num_devices)
  devices = jax.devices()
  return devices if len(devices) >= num_devices else jax.devices('cpu')
