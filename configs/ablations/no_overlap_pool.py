"""Ablation: non-overlapping 2x2/2 pooling (the paper reports +0.4/+0.3)."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.pool_window = 2
  return config
