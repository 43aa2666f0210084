"""Ablation: the paper's one-GPU net, one tower with half the kernels.

The paper (section 3.2, footnote) halves conv1-4 but keeps conv5 and the FC
layers at full width so that both nets have about as many parameters. The
paper: two towers are 1.7/1.2 better top-1/top-5.
"""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.model.num_towers = 1
  config.model.conv_features = (48, 128, 192, 192, 256)
  config.model.fc_features = (4096, 4096)
  config.mode = 'single'
  config.num_devices = 1
  return config
