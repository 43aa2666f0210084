"""The two-tower net past two devices: a data x tower mesh (here 2 x 2)."""

from configs import default


def get_config():
  config = default.get_config()
  config.mode = 'data_tower'
  config.num_devices = 4
  return config
