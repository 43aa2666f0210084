"""The repository's experiment files, loaded by path as `--config` loads them.

`configs/` is not a package: its files import only `alexnet_jax`.
"""

import importlib.util
import os
import sys

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


def _flat(tree: dict, prefix: str = ''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def overrides(config: ml_collections.ConfigDict) -> list[str]:
  """Command-line overrides that turn configs/demo.py into `config`."""
  base = dict(_flat(load('demo').to_dict()))
  return [f'--config.{key}={value}' for key, value in
          _flat(config.to_dict()) if base.get(key) != value]


def subprocess_env() -> dict[str, str]:
  """The environment of a program the tests start: this checkout first on
  the path, this Python, and the suite's compilation cache."""
  cache = os.path.expanduser(os.environ.get('ALEXNET_JAX_TEST_CACHE',
                                            '~/.cache/alexnet_jax/xla'))
  return dict(os.environ, PYTHONPATH=os.path.dirname(CONFIGS),
              PYTHON=sys.executable, JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
