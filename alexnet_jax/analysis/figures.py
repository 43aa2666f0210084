"""Figures of projections: one line per execution mode against devices."""

from alexnet_jax import hardware
from alexnet_jax.analysis import projection


def plot_by_mode(rows: list[projection.Row], path: str, *, value: str,
                 ylabel: str, title: str, ideal: bool = False) -> None:
  """`value` of each row against devices on log axes, one line per mode
  (and the ideal, y = devices, for speedups)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4.5))
  counts = sorted({r.devices for r in rows})
  if ideal:
    ax.plot(counts, counts, color='0.7', linestyle='--', label='ideal')
  for mode in dict.fromkeys(r.mode for r in rows):
    points = [(r.devices, getattr(r, value)) for r in rows if r.mode == mode]
    ax.plot(*zip(*points), marker='o', label=mode)
  ax.set(xscale='log', yscale='log', xlabel='devices', ylabel=ylabel,
         title=title)
  ax.set_xticks(counts, [str(c) for c in counts])
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot(rows: list[projection.Row], hw: hardware.Hardware, path: str) -> None:
  """Speedup against devices, one line per mode, and the ideal."""
  plot_by_mode(rows, path, value='speedup',
               ylabel='speedup over one device (projected)',
               title=f'{hw.name}: projected speedup', ideal=True)
