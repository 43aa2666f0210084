"""Where a mesh lies on the hardware, described without it.

With the TPU runtime library installed (`pip install -e '.[tpu]'`), a TPU
slice's topology (`v5e:4x4`: 16 chips on 4 hosts) can be described without
any TPU; with JAX's CUDA plugin (`pip install -e '.[gpu_compile]'`), so can
NVIDIA GPU nodes (`h100:2x8`: 2 hosts of 8 GPUs). A mesh over such device
descriptions compiles ahead of time (`analysis.compiled`), with the real
replica groups and per-device memory. This module says which mesh axis
lies along which physical dimension (TPU chip coordinates; on GPUs, NVLink
within a host or the network across hosts), which collectives cross hosts,
and how the peak memory compares with the device's.
"""

from typing import Any, Sequence

import numpy as np

from alexnet_jax import hardware
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import hlo


def hosts(devices: Sequence[Any]) -> int:
  return len({d.process_index for d in devices})


def _is_gpu(devices: Sequence[Any]) -> bool:
  return devices[0].platform == 'gpu'


def where(host_count: int, gpu: bool) -> str:
  """Where a group of devices on `host_count` hosts communicates."""
  if host_count == 1:
    return 'within a host (NVLink)' if gpu else 'within a host'
  return (f'across {host_count} hosts (network)' if gpu
          else f'across {host_count} hosts')


def _coords(device: Any) -> tuple[int, ...] | None:
  coords = getattr(device, 'coords', None)
  return tuple(coords) if coords is not None else None


def axis_placement(mesh: Any) -> list[dict[str, Any]]:
  """For each mesh axis: its size, the physical dimensions it moves along
  (x, y, z of TPU chip coordinates) and whether its groups stay in a host."""
  out = []
  grid = mesh.devices
  gpu = _is_gpu(list(grid.flat))
  for i, name in enumerate(mesh.axis_names):
    groups = np.moveaxis(grid, i, -1).reshape(-1, grid.shape[i])
    within = all(len({d.process_index for d in g}) == 1 for g in groups)
    dims = set()
    for group in groups:
      coords = [_coords(d) for d in group]
      if None in coords or gpu:  # A GPU's coordinates are not physical.
        continue
      for dim, values in enumerate(zip(*coords)):
        if len(set(values)) > 1:
          dims.add('xyz'[dim] if dim < 3 else f'dim{dim}')
    out.append({'axis': name, 'size': grid.shape[i],
                'physical': ''.join(sorted(dims)) or '-',
                'within_host': within})
  return out


def hosts_spanned(line: str, mesh_devices: Sequence[Any]) -> int:
  """How many hosts the widest replica group of a collective spans."""
  groups = hlo.replica_groups(line, len(mesh_devices))
  return max(len({mesh_devices[i].process_index for i in g}) for g in groups)


def collective_placement(hlo_text: str,
                         mesh_devices: Sequence[Any]) -> list[dict[str, Any]]:
  """Every collective with its received bytes, group size and host span."""
  out = []
  for line in hlo_text.splitlines():
    for op in hlo.collectives(line):
      groups = hlo.replica_groups(line, len(mesh_devices))
      group = 2 if op.kind == 'collective-permute' else len(groups[0])
      out.append({'kind': op.kind,
                  'bytes': comms.received_bytes(op.kind, op.bytes, group),
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
  gpu = _is_gpu(devices)
  for a in axis_placement(mesh):
    if gpu:
      lines.append(f'  axis {a["axis"]} (size {a["size"]}): '
                   + ('within a host (NVLink)' if a['within_host']
                      else 'across hosts (network)'))
      continue
    span = 'within a host' if a['within_host'] else 'across hosts'
    lines.append(f'  axis {a["axis"]} (size {a["size"]}): physical '
                 f'dimension {a["physical"]}, {span}')
  if hlo_text is not None:
    totals = {}
    for c in collective_placement(hlo_text, devices):
      key = (c['kind'], c['group'], where(c['hosts'], gpu))
      count, size = totals.get(key, (0, 0.0))
      totals[key] = (count + 1, size + c['bytes'])
    for (kind, group, place), (count, size) in sorted(totals.items()):
      lines.append(f'  {count:>3} x {kind:<19} groups of {group:<4} '
                   f'{place:<18} {round(size):>14,} bytes received')
  return lines


def bytes_by_place(collectives: Sequence[dict[str, Any]]) -> dict[str, int]:
  """Received bytes of `collective_placement`'s collectives within a host
  and across hosts."""
  within = sum(c['bytes'] for c in collectives if c['hosts'] == 1)
  across = sum(c['bytes'] for c in collectives if c['hosts'] > 1)
  return {'within_host': round(within), 'across_hosts': round(across)}


def memory_lines(peak_bytes: float, device_kind: str,
                 platform: str = 'cpu') -> list[str]:
  """Peak memory per device against the device's memory, where it is
  known; on a GPU also the headroom, and the share JAX's allocator takes,
  which is what a step may use."""
  hbm = hardware.HBM_BYTES.get(device_kind)
  if hbm is None:
    return [f'peak memory per device {peak_bytes / 2**30:.3f} GiB '
            f'({device_kind}: HBM not in the table)']
  usable = hardware.usable_bytes(device_kind, platform)
  verdict = 'fits' if peak_bytes <= usable else 'DOES NOT FIT'
  line = (f'peak memory per device {peak_bytes / 2**30:.3f} GiB of '
          f'{hbm / 2**30:.1f} GiB HBM ({peak_bytes / hbm:.1%})')
  if platform != 'gpu':
    return [f'{line}: {verdict}']
  return [f'{line}, headroom {(hbm - peak_bytes) / 2**30:.1f} GiB; JAX\'s '
          f'allocator takes {hardware.GPU_ALLOCATOR_FRACTION:.0%} of it '
          f'({usable / 2**30:.1f} GiB; XLA_PYTHON_CLIENT_MEM_FRACTION): '
          f'{verdict}']
