"""A small-image config for input-pipeline tests, shared by their modules."""

from alexnet_jax import defaults

RESIZE, CROP = 40, 32


def small_data_config(dataset: str, **overrides):
  """The default config on `dataset` at 40 px base images and 32 px crops."""
  config = defaults.get_config()
  config.dataset = dataset
  config.model.input_size = CROP
  config.input.resize_size = RESIZE
  config.input.prefetch_batches = 1
  config.batch_size = 4
  config.eval_batch_size = 4
  config.update_from_flattened_dict(overrides)
  return config
