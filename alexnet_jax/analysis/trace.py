"""Where a train step's time goes, read off a profiler trace (`capture`):
compute against collectives, per step and per device (averaged over the
traced steps and the devices):

  step_seconds                  the device's execution of one step
  compute_seconds               time in which any non-collective op runs
  collective_seconds            time in which any collective runs
  exposed_collective_fraction   share of the step in which a collective
                                runs and no compute does (0 to 1)

and a table of each collective kind: its count and bytes per step (read
from the compiled program as `analysis.comms` reads them), its measured
time, and the effective bandwidth those imply. A collective's time runs
from its start to its end on that device, so it includes waiting for the
slowest peer.

Where the ops come from: a GPU's or TPU's device planes (`/device:GPU:N`,
`/device:TPU:N`: every op, grouped into steps by the `XLA Modules` line);
on the CPU, whose devices have no plane, the host's thunk events (tagged
with their device and run). A backend that records no per-op events gets
one line saying so, not zeros.

During training, `--config.profile_steps=START,END` traces the steps after
step START up to step END into the workdir's TensorBoard directory (each
process other than 0 into tensorboard/process_N); `profile_hook` writes
these figures to WORKDIR/profile.json on process 0, which `report` shows.
"""

import bisect
import dataclasses
import re
import statistics
from typing import Any, Iterable, Mapping

import jax

from alexnet_jax import logs
from alexnet_jax import storage
from alexnet_jax.analysis import comms
from alexnet_jax.analysis import hlo

TRAIN_MODULE = 'jit_train_step'
_DEVICE_PLANE = re.compile(r'/device:(?:GPU|TPU):(\d+)$')


@dataclasses.dataclass(frozen=True)
class Op:
  """One execution of one op of a compiled program on one device."""
  name: str
  device: int
  run: int  # Which execution of the program (one train step).
  start_ns: float
  end_ns: float


def collective_kind(name: str, known: Mapping[str, str]) -> str | None:
  """The collective kind of an op named `name`, or None for compute.

  `known`: instruction name -> kind from the compiled program; other names
  (an async collective's `-done`, a trace without its program) go by the
  opcode they start with.
  """
  if name in known:
    return known[name]
  base = name.lower().replace('_', '-')
  return next((kind for kind in hlo.COLLECTIVES if base.startswith(kind)),
              None)


def known_collectives(hlo_text: str) -> dict[str, str]:
  """Instruction name -> collective kind, for every collective."""
  return {op.name: op.kind for op in hlo.collectives(hlo_text)}


def read_ops(xplane_path: str,
             module: str = TRAIN_MODULE) -> tuple[list[Op], str]:
  """Every op execution of `module` in a trace, and where they were read:
  the device planes where there are any, else the host's thunk events."""
  planes = list(jax.profiler.ProfileData.from_file(xplane_path).planes)
  devices = [(int(m.group(1)), p) for p in planes
             if (m := _DEVICE_PLANE.search(p.name))]
  if devices:
    return ([op for index, plane in devices
             for op in _device_plane_ops(plane, index, module)],
            'device planes')
  host = [p for p in planes if p.name == '/host:CPU']
  return (_host_thunk_ops(host[0], module) if host else [],
          'host thunk events')


def _device_plane_ops(plane: Any, device: int, module: str) -> list[Op]:
  """A GPU's or TPU's ops, each assigned to the execution of `module`
  (an event of the `XLA Modules` line) that contains it."""
  lines = {line.name: list(line.events) for line in plane.lines}
  runs = sorted((e.start_ns, e.end_ns) for e in lines.get('XLA Modules', [])
                if e.name.split('(')[0] == module)
  starts = [start for start, _ in runs]
  ops = []
  for event in lines.get('XLA Ops', []):
    run = bisect.bisect_right(starts, event.start_ns) - 1
    if run >= 0 and event.end_ns <= runs[run][1]:
      ops.append(Op(event.name, device, run, event.start_ns, event.end_ns))
  return ops


def _host_thunk_ops(plane: Any, module: str) -> list[Op]:
  """XLA:CPU's thunks of `module`. A thunk that runs asynchronously (a
  convolution, a collective waiting for its peers) ends at its `end: NAME`
  event, which shares its flow id (`_c`, the thunk's `_p`)."""
  thunks, ends = [], {}
  for line in plane.lines:
    for event in line.events:
      stats = dict(event.stats)
      if stats.get('hlo_module') == module and 'hlo_op' in stats:
        thunks.append((event, stats))
      elif event.name.startswith('end: ') and '_c' in stats:
        ends[stats['_c']] = event.start_ns
  return [Op(stats['hlo_op'], stats['device_ordinal'], stats['run_id'],
             event.start_ns, max(event.end_ns, ends.get(stats.get('_p'), 0)))
          for event, stats in thunks]


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
  """Seconds covered by any of the intervals (in ns)."""
  total, reach = 0.0, float('-inf')
  for start, end in sorted(intervals):
    if end > reach:
      total += end - max(start, reach)
      reach = end
  return total / 1e9


def step_split(ops: list[Op], known: Mapping[str, str]) -> dict[str, Any]:
  """Step, compute, collective and exposed seconds of one device's ops in
  one step, and each collective kind's seconds and event count."""
  spans = [(op.start_ns, op.end_ns) for op in ops]
  kinds = {}
  for op in ops:
    kinds.setdefault(collective_kind(op.name, known), []).append(op)
  compute = union_seconds((o.start_ns, o.end_ns) for o in kinds.pop(None, []))
  collective = union_seconds((o.start_ns, o.end_ns)
                             for group in kinds.values() for o in group)
  step = (max(e for _, e in spans) - min(s for s, _ in spans)) / 1e9
  return {'step_seconds': step, 'compute_seconds': compute,
          'collective_seconds': collective,
          'exposed_seconds': union_seconds(spans) - compute,
          'kinds': {kind: (union_seconds((o.start_ns, o.end_ns)
                                         for o in group), len(group))
                    for kind, group in kinds.items()}}


def _mean(splits: Iterable[dict[str, Any]], key: str) -> float:
  return statistics.fmean(s[key] for s in splits)


def measure(ops: list[Op], known: Mapping[str, str]) -> dict[str, Any] | None:
  """Per step per device figures, averaged over every traced step of every
  device; None where there are no ops."""
  groups = {}
  for op in ops:
    groups.setdefault((op.device, op.run), []).append(op)
  if not groups:
    return None
  splits = {key: step_split(group, known) for key, group in groups.items()}
  figures = {key: _mean(splits.values(), key) for key in (
      'step_seconds', 'compute_seconds', 'collective_seconds')}
  figures['exposed_collective_fraction'] = statistics.fmean(
      s['exposed_seconds'] / s['step_seconds'] if s['step_seconds'] else 0.0
      for s in splits.values())
  kinds = sorted({k for s in splits.values() for k in s['kinds']})
  figures['collectives'] = {
      kind: {'seconds': statistics.fmean(s['kinds'].get(kind, (0, 0))[0]
                                         for s in splits.values()),
             'events_per_step': statistics.fmean(
                 s['kinds'].get(kind, (0, 0))[1] for s in splits.values())}
      for kind in kinds}
  devices = sorted({device for device, _ in splits})
  figures['per_device'] = {
      device: {key: _mean([s for (d, _), s in splits.items() if d == device],
                          key)
               for key in ('step_seconds', 'compute_seconds',
                           'collective_seconds', 'exposed_seconds')}
      for device in devices}
  figures['steps'] = len({run for _, run in splits})
  figures['devices'] = len(devices)
  return figures


def add_compiled_bytes(figures: dict[str, Any], hlo_text: str,
                       num_devices: int) -> None:
  """Adds each collective kind's count and received bytes per step (as
  `analysis.comms` reads them from the compiled program) and the effective
  bandwidth they imply over the measured time."""
  compiled = comms.by_kind(comms.measured_terms(hlo_text, num_devices))
  table = figures['collectives']
  for kind, (count, size) in compiled.items():
    row = table.setdefault(kind, {'seconds': 0.0, 'events_per_step': 0.0})
    row.update(count=count, bytes=size, gbytes_per_s=(
        size / row['seconds'] / 1e9 if row['seconds'] else None))


def no_events_line(module: str, source: str, trace: str) -> str:
  return (f'no per-op events: this backend recorded none for {module} '
          f'({source} searched); the trace is {trace}')


def format_figures(figures: dict[str, Any]) -> str:
  """The four summary lines, the collectives table and the per-device
  lines."""
  lines = [f'{key} {figures[key]:.6g}' for key in (
      'step_seconds', 'compute_seconds', 'collective_seconds',
      'exposed_collective_fraction')]
  table = figures['collectives']
  if table:
    lines += ['', f'{"collective":<20}{"count":>7}{"bytes":>14}'
              f'{"measured ms":>13}{"GB/s":>10}   (per step per device)']
    for kind, row in table.items():
      rate = row.get('gbytes_per_s')
      lines.append(
          f'{kind:<20}{row.get("count", "-"):>7}'
          f'{format(row["bytes"], ",") if "bytes" in row else "-":>14}'
          f'{row["seconds"] * 1e3:>13.3f}'
          f'{"-" if rate is None else format(rate, ".3f"):>10}')
  else:
    lines += ['', 'no collectives: nothing is exchanged between devices']
  lines.append('')
  for device, row in figures['per_device'].items():
    lines.append(f'device {device}: step {row["step_seconds"] * 1e3:.3f} ms, '
                 f'compute {row["compute_seconds"] * 1e3:.3f} ms, collective '
                 f'{row["collective_seconds"] * 1e3:.3f} ms, exposed '
                 f'{row["exposed_seconds"] * 1e3:.3f} ms')
  return '\n'.join(lines)


def write_json(path: str, figures: dict[str, Any]) -> None:
  storage.write_json(path, figures)


def module_name(hlo_text: str) -> str:
  """The HLO module's name (`jit_train_step`), as traces tag its ops."""
  match = re.match(r'HloModule (\S+?),?\s', hlo_text)
  return match.group(1) if match else TRAIN_MODULE



def profile_hook(trace: str, what: str, run: dict[str, Any],
                 json_path: str | None) -> None:
  """The trainer's profile hook: the traced window's split on the console,
  and in `json_path` (process 0) for `report`."""
  ops, source = read_ops(trace)
  figures = measure(ops, {})
  if figures is None:
    logs.console(f'profile of {what}: '
                 + no_events_line(TRAIN_MODULE, source, trace))
    return
  logs.console(f'profile of {what} (trace {trace}): ' + ', '.join(
      f'{key} {figures[key]:.4g}' for key in (
          'step_seconds', 'compute_seconds', 'collective_seconds',
          'exposed_collective_fraction')))
  if json_path:
    write_json(json_path, figures | run | {'trace': trace, 'source': source})
