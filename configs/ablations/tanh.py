"""Ablation: tanh instead of ReLU.

The paper reports that ReLU trains about 6x faster.
"""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.model.activation = 'tanh'
  return config
