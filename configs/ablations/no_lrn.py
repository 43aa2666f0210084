"""Ablation: LRN off (the paper reports +1.4/+1.2 top-1/top-5 error)."""

from configs import default


def get_config():
  config = default.get_config()
  config.model.lrn = False
  return config
