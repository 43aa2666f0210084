"""The paper: two towers, one per device, exchanging at conv3 and the FCs."""

from alexnet_jax import defaults


def get_config():
  return defaults.get_config()  # The defaults are the paper's experiment.
