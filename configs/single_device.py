"""Both towers on one device: the reference every mode must reproduce."""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.mode = 'single'
  config.num_devices = 1
  return config
