"""Test set-up: simulated CPU devices and a persistent compilation cache.

Both must be configured before JAX initialises its backends, which is why
this runs at import time, before any test module imports JAX. The suite runs
on the CPU on every host, a GPU or TPU one included (subprocesses inherit
JAX_PLATFORMS); TPU slices are still described through libtpu
(`alexnet_jax.analysis.placement`), which needs no TPU backend.
"""

import os

os.environ['JAX_PLATFORMS'] = 'cpu'

import jax  # pylint: disable=g-import-not-at-top,g-bad-import-order

NUM_DEVICES = 4

jax.config.update('jax_platforms', 'cpu')
jax.config.update('jax_num_cpu_devices', NUM_DEVICES)
jax.config.update('jax_compilation_cache_dir', os.path.expanduser(
    os.environ.get('ALEXNET_JAX_TEST_CACHE', '~/.cache/alexnet_jax/xla')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)

import dataclasses  # pylint: disable=g-import-not-at-top,g-bad-import-order

import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order

from alexnet_jax import models  # pylint: disable=g-import-not-at-top

import experiment_config  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='session')
def small_spec() -> models.AlexNetSpec:
  """The paper's net at a width and resolution where size adds nothing.

  67x67 input keeps every layer's spatial extent above 1 (15, 7, 3, 1), and
  16 classes split over 2 towers and over 4 FC shards.
  """
  return dataclasses.replace(
      models.VARIANTS['paper'], input_size=67,
      conv_features=(8, 16, 24, 24, 16), fc_features=(32, 32),
      num_classes=16)


@pytest.fixture(scope='session')
def tiny_config_factory(tmp_path_factory):
  """Returns configs for a few-step run of `main` on tiny synthetic data.

  Shares one generated dataset for the whole session.
  """
  cache = str(tmp_path_factory.mktemp('synthetic'))

  def make(**overrides):
    config = experiment_config.load('demo')
    config.synthetic.num_classes = 4
    config.synthetic.train_per_class = 12
    config.synthetic.val_per_class = 5
    config.synthetic.cache_dir = cache
    config.input.resize_size = 76
    config.input.shuffle_buffer = 64
    config.model.input_size = 67
    config.model.num_classes = 4
    config.model.conv_features = (8, 16, 24, 24, 16)
    config.model.fc_features = (32, 32)
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 4
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
    config.eval_ten_crop = False  # Tests that need it turn it on.
    config.update_from_flattened_dict(overrides)
    return config

  return make


@pytest.fixture(scope='session')
def gcs():
  """A GCS emulator with an empty bucket, reached through the environment.

  Yields a `gcs_emulator.Emulator` (`.bucket`, `.env` for subprocesses,
  `.url(path)` -> 'gs://bucket/path'). os.environ carries `.env` from the
  first test that asks for it to the end of the session: TensorFlow reads
  the variables once, when its GCS filesystem first starts.
  """
  import gcs_emulator  # pylint: disable=g-import-not-at-top
  with gcs_emulator.running() as emulator, gcs_emulator.environ(
      emulator.env):
    yield emulator


def _start_cost(item) -> int:
  """0 for tests that start processes, 1 for other slow ones, 2 for the
  rest (by their markers)."""
  if item.get_closest_marker('multiprocess') or item.get_closest_marker(
      'slurm'):
    return 0
  return 1 if item.get_closest_marker('slow') else 2


def pytest_collection_modifyitems(items):
  """Modules with the longest tests first, each module's tests together and
  in their order: xdist's workers take tests from the front, so the long
  ones start early and both workers finish near the same time."""
  module_cost = {}
  for item in items:
    module_cost[item.module] = min(module_cost.get(item.module, 2),
                                   _start_cost(item))
  order = {id(item): i for i, item in enumerate(items)}
  items.sort(key=lambda item: (module_cost[item.module], order[id(item)]))
