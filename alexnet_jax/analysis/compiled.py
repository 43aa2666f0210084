"""What a compiled train step costs on the mesh it was compiled for: its
collectives, FLOPs, memory and placement (`cost`), and the dry run of
`main --dry_run` (placement and memory of the train and eval steps).
"""

from typing import Any, Sequence

import jax

from alexnet_jax import aot
from alexnet_jax import hardware
from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import placement
from alexnet_jax.analysis import projection
from alexnet_jax.data import device


def measure(config: Any, mode: str, num_devices: int, batch: int,
            devices: Sequence[Any] | None = None,
            fc_shards: int | None = None) -> dict[str, Any]:
  """Compiles the train step and reads its collectives, FLOPs and memory.

  `devices`: where to compile (default: this process's devices); a
  topology's devices (`aot.topology_devices`) add the placement of every
  collective on its hosts, and XLA's estimate of the step time (TPU) or a
  projection from the compiled program on the GPU's preset (GPU). XLA's
  GPU compiler reports no FLOPs: there they are counted from the
  unoptimised program (`flops_source` says which).
  """
  spec = parallel.spec_of(config)
  strategy = parallel.create_strategy(mode, num_devices, spec, batch,
                                      devices=devices, fc_shards=fc_shards)
  return _measure(config, strategy, batch)[0]


def _measure(config: Any, strategy: Any, batch: int) -> tuple[
    dict[str, Any], Any]:
  """`measure` on a strategy; and the abstract train state."""
  num_devices = strategy.mesh.devices.size
  lowered, state = aot.lower_train_step(config, strategy, batch)
  with jax.set_mesh(strategy.mesh), aot.quiet_cache_reads(strategy.mesh):
    compiled = lowered.compile()
  text = compiled.as_text()
  analysis = compiled.cost_analysis() or {}
  mesh_devices = list(strategy.mesh.devices.flat)
  kind, platform = mesh_devices[0].device_kind, mesh_devices[0].platform
  peak = aot.peak_memory(compiled)
  collectives = placement.collective_placement(text, mesh_devices)
  result = {
      'terms': comms.measured_terms(text, num_devices),
      'flops': analysis.get('flops') or aot.unoptimised_flops(lowered),
      'flops_source': ('the compiled program (XLA)' if 'flops' in analysis
                       else 'the unoptimised program, by XLA\'s HLO cost '
                       'analysis on the CPU: this compiler reports none'),
      'param_bytes': aot.bytes_per_device(state.params),
      'opt_state_bytes': aot.bytes_per_device(state.opt_state),
      'peak_memory_bytes': peak,
      'hbm_bytes': hardware.HBM_BYTES.get(kind),
      'usable_bytes': hardware.usable_bytes(kind, platform),
      'xla_optimal_seconds': analysis.get('optimal_seconds'),
      'estimated_step_seconds': aot.usable_estimate(analysis),
      'device_kind': kind,
      'platform': platform,
      'hosts': placement.hosts(mesh_devices),
      'collectives': collectives,
      'collective_bytes_by_place': placement.bytes_by_place(collectives),
      'fc_shards': strategy.layout.fc_shards,
      'placement': (placement.placement_lines(strategy.mesh, text)
                    + placement.memory_lines(peak, kind, platform))}
  preset = hardware.PRESET_OF_DEVICE_KIND.get(kind)
  if platform == 'gpu' and preset:
    hw = hardware.HARDWARE[preset]
    result['projection'] = {'hardware': preset} | projection.project_compiled(
        result['flops'], result['param_bytes'], collectives, batch, hw,
        projection.device_rate(hw))
  return result, state


def gpu_nodes(gpu: str, num_devices: int, per_node: int) -> str | None:
  """The `--topology` name of `num_devices` GPUs in nodes of `per_node`
  (`h100:2x8`), or None where they do not fill whole nodes."""
  if num_devices <= per_node:
    return f'{gpu}:1x{num_devices}'
  if num_devices % per_node:
    return None
  return f'{gpu}:{num_devices // per_node}x{per_node}'


def project_on_nodes(config: Any, mode: str, num_devices: int, batch: int,
                     hw: hardware.Hardware, rate: float
                     ) -> dict[str, Any] | None:
  """`projection.project_compiled` of the train step compiled for the GPU
  nodes of preset `hw` (parts, step, images/s, peak memory per device and
  the topology), or None where `hw` has no GPU target description, the
  GPU compiler is not installed or the devices do not fill whole nodes."""
  gpu = hardware.GPU_TARGET_OF_PRESET.get(hw.name)
  name = gpu and gpu_nodes(gpu, num_devices, hw.devices_per_node)
  if not name or not aot.gpu_compiler_installed():
    return None
  measured = measure(config, mode, num_devices, batch,
                     aot.topology_devices(name))
  return projection.project_compiled(
      measured['flops'], measured['param_bytes'], measured['collectives'],
      batch, hw, rate) | {'topology': name,
                          'peak_memory_bytes': measured['peak_memory_bytes']}


def fits(measured: dict[str, Any]) -> bool:
  """Whether a measured step's peak memory fits the device (under JAX's
  allocator's share of a GPU's memory)."""
  usable = measured['usable_bytes']
  if usable is None:
    raise ValueError(f'--max_batch: the memory of {measured["device_kind"]} '
                     'is not in the hardware table')
  return measured['peak_memory_bytes'] <= usable


def batch_unit(mode: str, num_devices: int, spec: Any, available: int,
               fc_shards: int) -> int:
  """The smallest global batch the mode splits over `num_devices`; every
  valid batch is a multiple of it."""
  for unit in range(1, num_devices + 1):
    try:
      parallel.validate(mode, num_devices, spec, unit, available, fc_shards)
    except ValueError:
      continue
    return unit
  raise ValueError(f'config.batch_size: no batch splits over {num_devices} '
                   f'devices in mode {mode}')


def max_batch(config: Any, mode: str, num_devices: int, start: int,
              devices: Sequence[Any] | None = None,
              fc_shards: int | None = None
              ) -> tuple[int, dict[int, dict[str, Any]]]:
  """The largest global batch whose compiled train step fits the device
  (`fits`), to within 1%, and every compile made on the way (batch ->
  `measure`).

  A bracketing search over compiles, from `start` (rounded down to a valid
  batch) and twice it. Peak memory grows about linearly with the batch, so
  each probe is where the line through two probes meets the memory limit:
  extrapolated until a batch does not fit, then interpolated inside the
  bracket (its midpoint after two probes that moved the same end). It
  assumes memory never falls as the batch grows; XLA's choices of
  algorithm make it jump by a few percent between neighbouring batches, so
  a batch just below the one found may not fit.
  """
  spec = parallel.spec_of(config)
  available = len(devices) if devices else num_devices
  unit = batch_unit(mode, num_devices, spec, available, fc_shards or 1)
  runs = {}

  def probe(units: int) -> bool:
    runs[units * unit] = measure(config, mode, num_devices, units * unit,
                                 devices, fc_shards)
    return fits(runs[units * unit])

  def peak(units: int) -> float:
    return runs[units * unit]['peak_memory_bytes']

  def crossing(a: int, b: int) -> float:
    """Where the line through probes a < b meets the limit (inf if flat)."""
    slope = (peak(b) - peak(a)) / (b - a)
    limit = runs[a * unit]['usable_bytes']
    return a + (limit - peak(a)) / slope if slope > 0 else float('inf')

  first = max(1, start // unit)
  lo, hi = (first, None) if probe(first) else (0, first)
  while lo == 0:  # Even `start` does not fit: halve down.
    if hi == 1:
      raise ValueError(f'--max_batch: not even a global batch of {unit} '
                       f'fits ({peak(1) / 2**30:.2f} GiB per device)')
    hi_next = hi // 2
    if probe(hi_next):
      lo = hi_next
    else:
      hi = hi_next
  below, moved = None, []
  while hi is None or hi - lo > max(1, lo // 100):
    if hi is None:
      step = max(1, lo // 64)
      nxt = 2 * lo if below is None else max(
          lo + step, int(min(crossing(below, lo), 64 * lo)))
      below = lo
    else:
      nxt = int(crossing(lo, hi))
      if moved[-2:] in (['lo', 'lo'], ['hi', 'hi']):
        nxt = (lo + hi) // 2
      nxt = min(max(nxt, lo + 1), hi - 1)
    if probe(nxt):
      lo = nxt
      moved.append('lo')
    else:
      hi = nxt
      moved.append('hi')
  return lo * unit, runs


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
  first = strategy.mesh.devices.flat[0]
  return [f'eval step ({protocols}, batch {batch}):',
          *['  ' + line for line in placement.memory_lines(
              aot.peak_memory(compiled), first.device_kind, first.platform)]]


def dry_run(config: Any, topology_name: str | None = None) -> list[str]:
  """Compiles the configured train and eval steps for the configured mesh
  (on this host's devices, or on a described TPU slice or GPU nodes) and
  returns what a user checks before a pod job: placement, collectives,
  memory per device; for GPU nodes also the FLOPs and the projected step.

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
  measured, state = _measure(config, strategy, config.batch_size)
  kind = devices[0].device_kind
  lines = [f'dry run: mode {config.mode}, {config.num_devices} of '
           f'{len(devices)} {kind} devices on {placement.hosts(devices)} '
           'host(s), '
           f'global batch {config.batch_size}; nothing was run.',
           *measured['placement'][:-1],
           f'train step (batch {config.batch_size}):',
           f'  {measured["placement"][-1]}',
           f'  parameter bytes per device {measured["param_bytes"]:,}']
  seconds = measured['estimated_step_seconds']
  if seconds:
    lines.append(f"  XLA's estimated step time {seconds:.6g} s "
                 f'({config.batch_size / seconds:,.0f} images/s; an '
                 'estimate)')
  if 'projection' in measured:
    lines += ['  ' + line for line in gpu_lines(measured)]
  return lines + _eval_lines(config, strategy, state)


def gpu_lines(measured: dict[str, Any]) -> list[str]:
  """A GPU program's FLOPs and where they come from, its collective bytes
  within and across hosts, and its projected step."""
  places = measured['collective_bytes_by_place']
  p = measured['projection']
  return [f'FLOPs per device {measured["flops"]:,.0f}, counted from '
          f'{measured["flops_source"]}',
          f'collective bytes received per device: {places["within_host"]:,} '
          f'within a host (NVLink), {places["across_hosts"]:,} across hosts '
          '(network)',
          f'projected step {p["step_s"] * 1e3:.2f} ms, '
          f'{p["images_per_sec"]:,.0f} images/s on the {p["hardware"]} '
          'preset (a projection from its datasheet links and an assumed '
          'one-GPU speed, not a measurement)']
