"""OWT (Krizhevsky 2014): the one-tower net, convs data-parallel, FC layers
model-parallel over the same devices."""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.model.variant = 'owt'
  config.mode = 'hybrid'
  return config
