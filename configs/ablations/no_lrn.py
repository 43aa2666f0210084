"""Ablation: LRN off (the paper reports +1.4/+1.2 top-1/top-5 error)."""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.model.lrn = False
  return config
