"""Reads facts off a compiled XLA program: its collectives and their bytes.

Tests and the cost tool use this so that claims about communication are
checked against what the compiler produced, not against intentions.
"""

import dataclasses
import math
import re

import numpy as np

COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter',
               'collective-permute', 'all-to-all')
_BYTES = {'f64': 8, 'f32': 4, 'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4,
          's8': 1, 'u8': 1, 'pred': 1, 's64': 8, 'u64': 8}
_OP = re.compile(r'^\s*%?(\S+) = (.*?) (' + '|'.join(COLLECTIVES) +
                 r')(?:-start)?\(', re.M)
_ARRAY = re.compile(r'(\w+)\[([\d,]*)\]')


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str
  name: str  # The instruction's, as profiler traces name its events.
  shapes: tuple[tuple[int, ...], ...]  # Result shapes (a tuple if fused).
  bytes: int  # Result bytes on one device.

  @property
  def elements(self) -> int:
    return sum(math.prod(s) for s in self.shapes)


def collectives(hlo_text: str) -> list[Collective]:
  """Every collective in a compiled (optimised) HLO module's text."""
  found = []
  for match in _OP.finditer(hlo_text):
    name, result_type, kind = match.groups()
    arrays = [(dtype, tuple(int(d) for d in dims.split(',') if d))
              for dtype, dims in _ARRAY.findall(result_type)
              if dtype in _BYTES]
    if '-start(' in match.group(0):
      arrays = arrays[len(arrays) // 2:]  # Async starts carry (in, out).
    found.append(Collective(
        kind, name, tuple(s for _, s in arrays),
        sum(_BYTES[d] * math.prod(s) for d, s in arrays)))
  return found


_GROUPS_LIST = re.compile(r'replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}')


_GROUPS_IOTA = re.compile(
    r'replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?')


_PAIRS = re.compile(r'source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}')


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
