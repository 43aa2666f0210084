"""The paper: two towers, one per device, exchanging at conv3 and the FCs."""

from configs import default


def get_config():
  return default.get_config()  # The defaults are the paper's experiment.
