"""The repository's experiment files, loaded by path as `--config` loads them.

`configs/` is not a package: its files import only `alexnet_jax`.
"""

import importlib.util
import os

import ml_collections

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs')


def load(name: str) -> ml_collections.ConfigDict:
  """`configs/<name>.py`'s get_config()."""
  spec = importlib.util.spec_from_file_location(
      f'experiment_{name.replace("/", "_")}',
      os.path.join(CONFIGS, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
