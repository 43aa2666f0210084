"""Where a mesh lies on the hardware, and compiling for TPU pods from here.

With the TPU runtime library installed (`pip install -e '.[tpu]'`), a TPU
slice's topology (`v5e:4x4`: 16 chips on 4 hosts) can be described without
any TPU; a mesh over its device descriptions compiles ahead of time, with
the slice's real replica groups, per-chip memory and XLA's own estimate of
the step time. This module describes such slices, says which mesh axis lies
along which physical dimension and which collectives cross hosts, and
compiles the train and eval steps for `main --dry_run`.
"""

import math
import os
import re
from typing import Any, Sequence

import numpy as np

# Per-chip HBM from the vendors' datasheets (Cloud TPU system architecture
# pages; NVIDIA H100 SXM datasheet), keyed by `device.device_kind`.
HBM_BYTES = {
    'TPU v4': 32 * 2**30,
    'TPU v5 lite': 16 * 2**30,  # v5e
    'TPU v5': 95 * 10**9,  # v5p
    'TPU v6 lite': 32 * 2**30,  # v6e (Trillium)
    'NVIDIA H100 80GB HBM3': 80 * 10**9,
}

# Set before libtpu loads: several processes may hold it on a machine with no
# TPU (the lockfile is for sharing real chips), and with no TPU metadata
# server it should not look for one, for worker hostnames or for this
# host's accelerator type (any valid type quiets it; the topology named
# in `topology_devices` is what is described).
_LIBTPU_ENV = {'ALLOW_MULTIPLE_LIBTPU_LOAD': '1', 'TPU_SKIP_MDS_QUERY': '1',
               'TPU_WORKER_HOSTNAMES': 'localhost',
               'TPU_ACCELERATOR_TYPE': 'v5litepod-1'}

_GROUPS_LIST = re.compile(r'replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}')
_GROUPS_IOTA = re.compile(
    r'replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?')
_PAIRS = re.compile(r'source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}')


def prepare_libtpu() -> None:
  """Environment for describing TPU topologies on a machine without TPUs."""
  for key, value in _LIBTPU_ENV.items():
    os.environ.setdefault(key, value)


def topology_devices(name: str) -> list[Any]:
  """The chips of a TPU slice named like `v5e:4x4` (no TPU needed).

  Raises a one-line ValueError naming --topology when the name is unknown
  or the TPU runtime library is missing.
  """
  prepare_libtpu()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
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


def hosts(devices: Sequence[Any]) -> int:
  return len({d.process_index for d in devices})


def _coords(device: Any) -> tuple[int, ...] | None:
  coords = getattr(device, 'coords', None)
  return tuple(coords) if coords is not None else None


def axis_placement(mesh: Any) -> list[dict[str, Any]]:
  """For each mesh axis: its size, the physical dimensions it moves along
  (x, y, z of TPU chip coordinates) and whether its groups stay in a host."""
  out = []
  grid = mesh.devices
  for i, name in enumerate(mesh.axis_names):
    groups = np.moveaxis(grid, i, -1).reshape(-1, grid.shape[i])
    within = all(len({d.process_index for d in g}) == 1 for g in groups)
    dims = set()
    for group in groups:
      coords = [_coords(d) for d in group]
      if None in coords:
        continue
      for dim, values in enumerate(zip(*coords)):
        if len(set(values)) > 1:
          dims.add('xyz'[dim] if dim < 3 else f'dim{dim}')
    out.append({'axis': name, 'size': grid.shape[i],
                'physical': ''.join(sorted(dims)) or '-',
                'within_host': within})
  return out


def replica_groups(line: str, num_devices: int) -> list[list[int]]:
  """The replica groups of one HLO collective, as mesh device indices."""
  if match := _GROUPS_LIST.search(line):
    return [[int(i) for i in g.split(',') if i]
            for g in re.findall(r'\{([\d,]*)\}', match.group(1))]
  if match := _GROUPS_IOTA.search(line):
    groups, size, dims, perm = match.groups()
    ids = np.arange(math.prod(int(d) for d in dims.split(',')))
    ids = ids.reshape([int(d) for d in dims.split(',')])
    if perm:
      ids = ids.transpose([int(p) for p in perm.split(',')])
    return ids.reshape(int(groups), int(size)).tolist()
  if match := _PAIRS.search(line):
    return [[int(a), int(b)] for a, b in
            re.findall(r'\{(\d+),(\d+)\}', match.group(1))]
  return [list(range(num_devices))]


def hosts_spanned(line: str, mesh_devices: Sequence[Any]) -> int:
  """How many hosts the widest replica group of a collective spans."""
  groups = replica_groups(line, len(mesh_devices))
  return max(len({mesh_devices[i].process_index for i in g}) for g in groups)


def collective_placement(hlo_text: str,
                         mesh_devices: Sequence[Any]) -> list[dict[str, Any]]:
  """Every collective with its received bytes, group size and host span."""
  from alexnet_jax import cost  # pylint: disable=g-import-not-at-top
  from alexnet_jax import hlo  # pylint: disable=g-import-not-at-top
  out = []
  for line in hlo_text.splitlines():
    for op in hlo.collectives(line):
      groups = replica_groups(line, len(mesh_devices))
      group = 2 if op.kind == 'collective-permute' else len(groups[0])
      out.append({'kind': op.kind,
                  'bytes': cost.received_bytes(op.kind, op.bytes, group),
                  'group': group,
                  'hosts': hosts_spanned(line, mesh_devices)})
  return out


def placement_lines(mesh: Any, hlo_text: str | None = None) -> list[str]:
  """Human-readable placement: mesh axes on the hardware, collectives."""
  devices = list(mesh.devices.flat)
  count = hosts(devices)
  lines = [f'mesh {dict(mesh.shape)} on {len(devices)} '
           f'{devices[0].device_kind} devices, {count} '
           f'host{"s" if count > 1 else ""}']
  for a in axis_placement(mesh):
    where = 'within a host' if a['within_host'] else 'across hosts'
    lines.append(f'  axis {a["axis"]} (size {a["size"]}): physical '
                 f'dimension {a["physical"]}, {where}')
  if hlo_text is not None:
    totals = {}
    for c in collective_placement(hlo_text, devices):
      key = (c['kind'], c['group'],
             'within a host' if c['hosts'] == 1 else f'across {c["hosts"]} '
             'hosts')
      count, size = totals.get(key, (0, 0.0))
      totals[key] = (count + 1, size + c['bytes'])
    for (kind, group, where), (count, size) in sorted(totals.items()):
      lines.append(f'  {count:>3} x {kind:<19} groups of {group:<4} '
                   f'{where:<18} {round(size):>14,} bytes received')
  return lines


def memory_lines(peak_bytes: float, device_kind: str) -> list[str]:
  """Peak memory per device against the chip's HBM, where it is known."""
  hbm = HBM_BYTES.get(device_kind)
  if hbm is None:
    return [f'peak memory per device {peak_bytes / 2**30:.3f} GiB '
            f'({device_kind}: HBM not in the table)']
  verdict = 'fits' if peak_bytes <= hbm else 'DOES NOT FIT'
  return [f'peak memory per device {peak_bytes / 2**30:.3f} GiB of '
          f'{hbm / 2**30:.1f} GiB HBM ({peak_bytes / hbm:.1%}): {verdict}']


def _eval_lines(config: Any, strategy: Any, state: Any) -> list[str]:
  """Compiles the eval step (centre crop, and the ten crops if configured,
  from one batch of uint8 base images); its memory per device."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import cost  # pylint: disable=g-import-not-at-top
  from alexnet_jax import parallel  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import device  # pylint: disable=g-import-not-at-top
  spec = parallel.spec_of(config)
  batch, base = config.eval_batch_size, config.input.resize_size
  sharding = strategy.batch_sharding()
  args = {'image': jax.ShapeDtypeStruct((batch, base, base, 3),
                                        jax.numpy.uint8, sharding=sharding),
          'label': jax.ShapeDtypeStruct((batch,), jax.numpy.int32,
                                        sharding=sharding),
          'mask': jax.ShapeDtypeStruct((batch,), jax.numpy.bool_,
                                       sharding=sharding)}
  with jax.set_mesh(strategy.mesh), cost.quiet_cache_reads(strategy.mesh):
    step = train.make_eval_step(spec, strategy, state.params,
                                device.Normalization.from_config(config),
                                ten_crop=config.eval_ten_crop)
    compiled = step.lower(state.params, args).compile()
  protocols = 'centre crop + 10 crops' if config.eval_ten_crop else (
      'centre crop')
  kind = strategy.mesh.devices.flat[0].device_kind
  return [f'eval step ({protocols}, batch {batch}):',
          *['  ' + line for line in memory_lines(cost.peak_memory(compiled),
                                                  kind)]]


def dry_run(config: Any, topology_name: str | None = None) -> list[str]:
  """Compiles the configured train and eval steps for the configured mesh
  (on this host's devices, or on a described TPU slice) and returns what a
  user checks before a pod job: placement, collectives, memory per device.

  Raises ValueError (one line, naming the setting at fault) when the mesh
  does not fit the devices or the batch does not split over it.
  """
  from alexnet_jax import cost  # pylint: disable=g-import-not-at-top
  from alexnet_jax import parallel  # pylint: disable=g-import-not-at-top
  if topology_name:
    cost.jax_on_cpu()
    devices = topology_devices(topology_name)
  else:
    devices = cost.compile_devices(config.num_devices)
  spec = parallel.spec_of(config)
  strategy = parallel.create_strategy(config.mode, config.num_devices, spec,
                                      config.batch_size, devices=devices)
  compiled, state = cost.compile_train_step(config, strategy,
                                            config.batch_size)
  kind = devices[0].device_kind
  lines = [f'dry run: mode {config.mode}, {config.num_devices} of '
           f'{len(devices)} {kind} devices on {hosts(devices)} host(s), '
           f'global batch {config.batch_size}; nothing was run.',
           *placement_lines(strategy.mesh, compiled.as_text()),
           f'train step (batch {config.batch_size}):',
           *['  ' + line for line in memory_lines(cost.peak_memory(compiled),
                                                  kind)]]
  seconds = cost.usable_estimate(compiled.cost_analysis())
  if seconds:
    lines.append(f"  XLA's estimated step time {seconds:.6g} s "
                 f'({config.batch_size / seconds:,.0f} images/s; an '
                 'estimate)')
  return lines + _eval_lines(config, strategy, state)
