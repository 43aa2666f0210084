"""Reads facts off a compiled XLA program: its collectives and their bytes.

Tests and the cost tool use this so that claims about communication are
checked against what the compiler produced, not against intentions.
"""

import dataclasses
import math
import re

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
