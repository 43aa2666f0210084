"""The paper: two towers, one per device, exchanging at conv3 and the FCs.

The paper's recipe on ImageNet is the defaults (`alexnet_jax/defaults.py`,
with what each field means), so this file runs them as they are.
"""

from alexnet_jax import defaults


def get_config():
  return defaults.get_config()  # The defaults are the paper's experiment.
