"""AlexNet in JAX: two towers of kernels on two devices, and its tools.

`python -m alexnet_jax.TOOL` imports this package before the tool's own
module, and so before the tool imports TensorFlow or JAX starts: the one
moment early enough to quiet their start-up (`cli.prepare_process`).
While `-m` locates the tool, `sys.argv[0]` is '-m'; a program or notebook
that imports the package keeps its own environment.
"""

import sys

if sys.argv[:1] == ['-m']:
  from alexnet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.prepare_process(sys.argv[1:])
