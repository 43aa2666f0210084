"""Data parallelism: the two-tower net replicated, the batch split."""

from configs import default


def get_config():
  config = default.get_config()
  config.mode = 'data'
  return config
