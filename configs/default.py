"""The paper's recipe on ImageNet, every field at its default.

The defaults themselves, with what each field means, are in
`alexnet_jax/defaults.py`; every other file here starts from them.
"""

from alexnet_jax import defaults


def get_config():
  return defaults.get_config()
