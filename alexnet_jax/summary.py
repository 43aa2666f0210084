"""Prints AlexNet's per-layer shapes, parameters, multiply-adds and sharding.

  python -m alexnet_jax.summary --config=configs/two_tower.py
"""

import math
from typing import Any

from absl import app
from ml_collections import config_flags

from alexnet_jax import parallel

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/two_tower.py',
                                          'Experiment config.', lock_config=True)


def layer_rows(spec, strategy) -> list[dict[str, Any]]:
  """One row per layer: output shape, parameters, forward MACs per image."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top

  model = models.AlexNet(spec)
  params = parallel.abstract_params(spec)
  image = jax.ShapeDtypeStruct((1, spec.input_size, spec.input_size, 3),
                               jax.numpy.float32)
  _, state = jax.eval_shape(
      lambda p, x: model.apply({'params': p}, x, train=False,
                               mutable=['intermediates']), params, image)
  rows = []
  (outputs,) = state['intermediates']['layer_outputs']
  for name in models.LAYERS:
    value = outputs[name]
    if isinstance(value, list):  # Conv layers: one [B, H, W, C] per tower.
      towers, per_tower = len(value), value[0].shape[1:]
    else:  # FC layers: [B, towers, features].
      towers, per_tower = value.shape[1], value.shape[2:]
    row = {'layer': name, 'towers': towers, 'output': per_tower,
           'params': 0, 'macs': 0, 'split': '-'}
    if name in params:
      kernel, bias = params[name]['kernel'], params[name]['bias']
      spatial = math.prod(per_tower[:-1])  # H*W for convs, 1 for FC.
      row['params'] = kernel.size + bias.size
      row['macs'] = kernel.size * spatial
      spec_axes = strategy.param_spec((name,), kernel.ndim)
      row['split'] = ','.join(a for a in spec_axes if a) or 'replicated'
    rows.append(row)
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  lines = [f'{"layer":<7}{"output per tower":>24}{"params":>14}'
           f'{"fwd MACs/image":>17}  split over']
  for r in rows:
    shape = f'{r["towers"]} x ' + 'x'.join(map(str, r['output']))
    lines.append(f'{r["layer"]:<7}{shape:>24}{r["params"]:>14,}'
                 f'{r["macs"]:>17,}  {r["split"]}')
  lines.append(f'total params {sum(r["params"] for r in rows)}')
  lines.append(f'total macs {sum(r["macs"] for r in rows)}')
  return '\n'.join(lines)


def main(argv):
  del argv
  config = _CONFIG.value
  parallel.request_cpu_devices(config.num_devices)
  strategy = parallel.strategy_from_config(config)
  spec = parallel.spec_of(config)
  print(f'variant {config.model.variant}, mode {config.mode} on mesh '
        f'{dict(strategy.mesh.shape)}, input {spec.input_size}x'
        f'{spec.input_size}, {spec.num_classes} classes')
  print(format_table(layer_rows(spec, strategy)))


if __name__ == '__main__':
  app.run(main)
