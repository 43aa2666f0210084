"""Ablation: no PCA lighting noise (the paper reports about +1 top-1)."""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.input.pca_lighting_sigma = 0.0
  return config
