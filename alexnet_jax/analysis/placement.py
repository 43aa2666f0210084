"""Where a mesh lies on the hardware, and compiling for TPU pods from here.

With the TPU runtime library installed (`pip install -e '.[tpu]'`), a TPU
slice's topology (`v5e:4x4`: 16 chips on 4 hosts) can be described without
any TPU; a mesh over its device descriptions compiles ahead of time, with
the slice's real replica groups, per-chip memory and XLA's own estimate of
the step time. This module describes such slices, says which mesh axis lies
along which physical dimension and which collectives cross hosts, and
compiles the train and eval steps for `main --dry_run`.
"""

from typing import Any, Sequence

import numpy as np

from alexnet_jax import hardware
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import hlo


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
  hbm = hardware.HBM_BYTES.get(device_kind)
  if hbm is None:
    return [f'peak memory per device {peak_bytes / 2**30:.3f} GiB '
            f'({device_kind}: HBM not in the table)']
  verdict = 'fits' if peak_bytes <= hbm else 'DOES NOT FIT'
  return [f'peak memory per device {peak_bytes / 2**30:.3f} GiB of '
          f'{hbm / 2**30:.1f} GiB HBM ({peak_bytes / hbm:.1%}): {verdict}']


