"""OWT's hybrid at pod scale: a 2-D mesh, FC layers split within each host
(`fc` axis), the batch split over every device, FC gradients all-reduced
across hosts (`data` axis). 16 devices: a v5e:4x4 slice (4 hosts of 4
chips) or two 8-GPU nodes. Batch and learning rate scaled linearly from the
paper's 128 and 0.01, as OWT did (docs/paper.md, Parallelism)."""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.model.variant = 'owt'
  config.mode = 'hybrid_2d'
  config.num_devices = 16
  config.batch_size = 16 * 128
  config.optimizer.learning_rate = 16 * 0.01
  return config
