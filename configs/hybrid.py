"""OWT (Krizhevsky 2014): the one-tower net, convs data-parallel, FC layers
model-parallel over the same devices."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.variant = 'owt'
  config.mode = 'hybrid'
  return config
