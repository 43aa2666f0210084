"""Ablation: non-overlapping 2x2/2 pooling (the paper reports +0.4/+0.3)."""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.model.pool_window = 2
  return config
