"""Ablation: no dropout on the outputs of fc6 and fc7."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.dropout_rate = 0.0
  return config
