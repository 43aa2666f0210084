"""What a compiled train step costs on the mesh it was compiled for: its
collectives, FLOPs, memory and placement (`cost`), and the dry run of
`main --dry_run` (placement and memory of the train and eval steps).
"""

from typing import Any, Sequence

import jax

from alexnet_jax import aot
from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import placement
from alexnet_jax.data import device


def measure(config: Any, mode: str, num_devices: int, batch: int,
            devices: Sequence[Any] | None = None,
            fc_shards: int | None = None) -> dict[str, Any]:
  """Compiles the train step and reads its collectives, FLOPs and memory.

  `devices`: where to compile (default: this process's devices); a TPU
  topology's devices (`aot.topology_devices`) add XLA's estimate of the
  step time and the placement of every collective on the slice's hosts.
  """
  spec = parallel.spec_of(config)
  strategy = parallel.create_strategy(mode, num_devices, spec, batch,
                                      devices=devices, fc_shards=fc_shards)
  compiled, state = aot.compile_train_step(config, strategy, batch)
  text = compiled.as_text()
  analysis = compiled.cost_analysis()
  kind = strategy.mesh.devices.flat[0].device_kind
  peak = aot.peak_memory(compiled)
  return {'terms': comms.measured_terms(text, num_devices),
          'flops': analysis['flops'],
          'param_bytes': aot.bytes_per_device(state.params),
          'opt_state_bytes': aot.bytes_per_device(state.opt_state),
          'peak_memory_bytes': peak,
          'xla_optimal_seconds': analysis.get('optimal_seconds'),
          'estimated_step_seconds': aot.usable_estimate(analysis),
          'device_kind': kind,
          'fc_shards': strategy.layout.fc_shards,
          'placement': (placement.placement_lines(strategy.mesh, text)
                        + placement.memory_lines(peak, kind))}


def _eval_lines(config: Any, strategy: Any, state: Any) -> list[str]:
  """Compiles the eval step (centre crop, and the ten crops if configured,
  from one batch of uint8 base images); its memory per device."""
  spec = parallel.spec_of(config)
  batch, base = config.eval_batch_size, config.input.resize_size
  sharding = strategy.batch_sharding()
  args = {'image': jax.ShapeDtypeStruct((batch, base, base, 3),
                                        jax.numpy.uint8, sharding=sharding),
          'label': jax.ShapeDtypeStruct((batch,), jax.numpy.int32,
                                        sharding=sharding),
          'mask': jax.ShapeDtypeStruct((batch,), jax.numpy.bool_,
                                       sharding=sharding)}
  with jax.set_mesh(strategy.mesh), aot.quiet_cache_reads(strategy.mesh):
    step = steps.make_eval_step(spec, strategy, state.params,
                                device.Normalization.from_config(config),
                                ten_crop=config.eval_ten_crop)
    compiled = step.lower(state.params, args).compile()
  protocols = 'centre crop + 10 crops' if config.eval_ten_crop else (
      'centre crop')
  kind = strategy.mesh.devices.flat[0].device_kind
  return [f'eval step ({protocols}, batch {batch}):',
          *['  ' + line for line in placement.memory_lines(
              aot.peak_memory(compiled), kind)]]


def dry_run(config: Any, topology_name: str | None = None) -> list[str]:
  """Compiles the configured train and eval steps for the configured mesh
  (on this host's devices, or on a described TPU slice) and returns what a
  user checks before a pod job: placement, collectives, memory per device.

  Raises ValueError (one line, naming the setting at fault) when the mesh
  does not fit the devices or the batch does not split over it.
  """
  if topology_name:
    aot.jax_on_cpu()
    devices = aot.topology_devices(topology_name)
  else:
    devices = aot.compile_devices(config.num_devices)
  spec = parallel.spec_of(config)
  strategy = parallel.create_strategy(config.mode, config.num_devices, spec,
                                      config.batch_size, devices=devices)
  compiled, state = aot.compile_train_step(config, strategy,
                                           config.batch_size)
  kind = devices[0].device_kind
  lines = [f'dry run: mode {config.mode}, {config.num_devices} of '
           f'{len(devices)} {kind} devices on {placement.hosts(devices)} '
           'host(s), '
           f'global batch {config.batch_size}; nothing was run.',
           *placement.placement_lines(strategy.mesh, compiled.as_text()),
           f'train step (batch {config.batch_size}):',
           *['  ' + line for line in placement.memory_lines(
              aot.peak_memory(compiled), kind)]]
  seconds = aot.usable_estimate(compiled.cost_analysis())
  if seconds:
    lines.append(f"  XLA's estimated step time {seconds:.6g} s "
                 f'({config.batch_size / seconds:,.0f} images/s; an '
                 'estimate)')
  return lines + _eval_lines(config, strategy, state)
