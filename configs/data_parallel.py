"""Data parallelism: the two-tower net replicated, the batch split."""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.mode = 'data'
  return config
