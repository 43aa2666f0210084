"""Ablation: no PCA lighting noise (the paper reports about +1 top-1)."""

from configs import default


def get_config():
  config = default.get_config()
  config.input.pca_lighting_sigma = 0.0
  return config
