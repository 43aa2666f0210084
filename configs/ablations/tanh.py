"""Ablation: tanh instead of ReLU (the paper reports ReLU trains about 6x faster)."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.activation = 'tanh'
  return config
