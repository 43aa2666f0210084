"""Prints AlexNet's per-layer shapes, parameters, multiply-adds and sharding.

  python -m alexnet_jax.tools.summary --config=configs/two_tower.py
"""

from typing import Any

from alexnet_jax import cli
from alexnet_jax import models
from alexnet_jax import parallel


def layer_rows(spec, strategy) -> list[dict[str, Any]]:
  """`models.layer_stats` plus the mesh axes each layer's weights split over."""
  rows = models.layer_stats(spec)
  for row in rows:
    row['split'] = '-'
    if row['params']:
      axes = strategy.param_spec((row['layer'],), 5)
      row['split'] = ','.join(a for a in axes if a) or 'replicated'
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  """One line per layer: its output as the number of towers times one
  tower's shape (H x W x C, per image), its parameters and forward
  multiply-adds per image over all towers, and the mesh axes that split its
  weights."""
  lines = [f'{"layer":<7}{"towers x HxWxC":>24}{"params":>14}'
           f'{"fwd MACs/image":>17}  split over']
  for r in rows:
    shape = f'{r["towers"]} x ' + 'x'.join(map(str, r['output']))
    lines.append(f'{r["layer"]:<7}{shape:>24}{r["params"]:>14,}'
                 f'{r["macs"]:>17,}  {r["split"]}')
  lines.append(f'total params {sum(r["params"] for r in rows)}')
  lines.append(f'total macs {sum(r["macs"] for r in rows)}')
  return '\n'.join(lines)


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.summary`."""
  return {'config': cli.config_flag('configs/two_tower.py')}


def main(argv: list[str], flag: cli.Flags) -> None:
  del argv
  config = flag['config'].value
  parallel.request_cpu_devices(config.num_devices)
  strategy = parallel.strategy_from_config(config)
  spec = parallel.spec_of(config)
  print(f'variant {config.model.variant}, mode {config.mode} on mesh '
        f'{dict(strategy.mesh.shape)}, input {spec.input_size}x'
        f'{spec.input_size}, {spec.num_classes} classes')
  print(format_table(layer_rows(spec, strategy)))


if __name__ == '__main__':
  cli.run(main, define_flags)
