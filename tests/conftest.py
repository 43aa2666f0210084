"""Test set-up: simulated CPU devices and a persistent compilation cache.

Both must be configured before JAX initialises its backends, which is why
this runs at import time, before any test module imports JAX.
"""

import os

import jax

NUM_DEVICES = 4

jax.config.update('jax_num_cpu_devices', NUM_DEVICES)
jax.config.update('jax_compilation_cache_dir', os.path.expanduser(
    os.environ.get('ALEXNET_JAX_TEST_CACHE', '~/.cache/alexnet_jax/xla')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

import dataclasses  # pylint: disable=g-import-not-at-top,g-bad-import-order

import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order

from alexnet_jax import models  # pylint: disable=g-import-not-at-top


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
