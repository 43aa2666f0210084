"""Both towers on one device: the reference every mode must reproduce."""

from configs import default


def get_config():
  config = default.get_config()
  config.mode = 'single'
  config.num_devices = 1
  return config
