"""The two-tower net past two devices: a data x tower mesh (here 2 x 2)."""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.mode = 'data_tower'
  config.num_devices = 4
  return config
