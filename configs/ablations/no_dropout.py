"""Ablation: no dropout on the outputs of fc6 and fc7."""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.model.dropout_rate = 0.0
  return config
