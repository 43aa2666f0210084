"""Config keys: every model field settable, a misspelt key named in one line."""

import dataclasses
import os
import pathlib
import subprocess
import sys

from absl import flags
import ml_collections
from ml_collections import config_flags
import pytest

from alexnet_jax import cli
from alexnet_jax import defaults
from alexnet_jax import models

import experiment_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A valid value unlike the default for every AlexNetSpec field, as typed on
# the command line, and the value the spec must end up with.
NON_DEFAULT = {
    'num_towers': ('1', 1),
    'conv_features': ('(8,16,24,24,16)', (8, 16, 24, 24, 16)),
    'fc_features': ('(32,32)', (32, 32)),
    'num_classes': ('10', 10),
    'input_size': ('67', 67),
    'conv1_padding': ('torchvision', 'torchvision'),
    'lrn': ('False', False),
    'lrn_k': ('1.0', 1.0),
    'lrn_n': ('3', 3),
    'lrn_alpha': ('2e-4', 2e-4),
    'lrn_beta': ('0.5', 0.5),
    'lrn_alpha_over_n': ('False', False),
    'lrn_across_towers': ('True', True),
    'pool_window': ('2', 2),
    'pool_stride': ('1', 1),
    'activation': ('tanh', 'tanh'),
    'dropout_rate': ('0.3', 0.3),
    'dropout_placement': ('before_fc', 'before_fc'),
    'init': ('he', 'he'),
    'dtype': ('bfloat16', 'bfloat16'),
}


def _parse_config(args: list[str]) -> ml_collections.ConfigDict:
  """configs/two_tower.py with `args` applied as the entry points parse them."""
  argv = ['prog', f'--config={REPO}/configs/two_tower.py', *args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=values, sys_argv=argv,
                                  lock_config=True)
  values(argv)
  return values.config


def test_every_spec_field_is_settable_from_the_command_line():
  fields = dataclasses.fields(models.AlexNetSpec)
  assert set(NON_DEFAULT) == {f.name for f in fields}
  config = _parse_config([f'--config.model.{name}={typed}'
                          for name, (typed, _) in NON_DEFAULT.items()])
  spec = models.spec_from_config(config.model)
  for field in fields:
    expected = NON_DEFAULT[field.name][1]
    assert expected != field.default, field.name
    assert getattr(spec, field.name) == expected, field.name


def test_unset_fields_take_the_variant_values():
  config = _parse_config(['--config.model.variant=caffe'])
  assert models.spec_from_config(config.model) == models.VARIANTS['caffe']


def _config():
  return ml_collections.ConfigDict(
      {'mode': 'tower', 'batch_size': 8,
       'model': {'variant': 'paper', 'lrn': True, 'lrn_n': 5}})


@pytest.mark.parametrize('path,message', [
    ('model.lrn', None),
    ('modle.lrn', '--config.modle.lrn: no such config key; '
                  'did you mean --config.model.lrn?'),
    ('model.lrm', '--config.model.lrm: no such config key; '
                  'did you mean --config.model.lrn?'),
    ('bach_size', '--config.bach_size: no such config key; '
                  'did you mean --config.batch_size?'),
    ('zzz', '--config.zzz: no such config key'),
    ('mode.x', '--config.mode.x: config.mode has no fields'),
])
def test_unknown_key_names_the_key_and_the_closest_one(path, message):
  assert cli.unknown_key(_config(), path) == message


@pytest.mark.slow
@pytest.mark.parametrize('module,args', [
    ('main', ['--workdir=unused']), ('tools.summary', [])])
def test_misspelt_override_is_one_line_from_the_entry_points(module, args):
  result = subprocess.run(
      [sys.executable, '-m', f'alexnet_jax.{module}',
       f'--config={REPO}/configs/demo.py', *args, '--config.modle.lrn=False'],
      env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
      check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      'error: --config.modle.lrn: no such config key; '
      'did you mean --config.model.lrn?']



def _flat_keys(config: ml_collections.ConfigDict, prefix: str = '') -> set[str]:
  """Every dotted field path of `config`."""
  keys = set()
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys |= _flat_keys(value, f'{prefix}{key}.')
    else:
      keys.add(f'{prefix}{key}')
  return keys


def test_every_experiment_file_loads_by_path_with_the_default_fields(
    monkeypatch):
  # `import configs` fails even with the repository root on sys.path: the
  # files import only `alexnet_jax`.
  monkeypatch.setitem(sys.modules, 'configs', None)
  names = sorted(str(path.relative_to(experiment_config.CONFIGS))[:-3]
                 for path in pathlib.Path(experiment_config.CONFIGS).rglob(
                     '*.py'))
  assert {'two_tower', 'demo', 'ablations/no_lrn'} <= set(names)
  fields = _flat_keys(defaults.get_config())
  for name in names:
    assert _flat_keys(experiment_config.load(name)) == fields, name
