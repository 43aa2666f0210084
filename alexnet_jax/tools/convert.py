"""Converts pretrained AlexNet weights from and to other frameworks.

  python -m alexnet_jax.tools.convert --from=torchvision alexnet.pth \
      --out=CKPT_DIR
  python -m alexnet_jax.tools.convert --from=caffe bvlc_alexnet.npy \
      --out=CKPT_DIR
  python -m alexnet_jax.tools.convert --to=torchvision CKPT_DIR \
      --out=alexnet.pth

The conversions themselves are `alexnet_jax.pretrained`.
"""

import os

from absl import app
from absl import flags

from alexnet_jax import cli
from alexnet_jax import pretrained


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.convert`."""
  return {
      'from': flags.DEFINE_enum(
          'from', None, ['torchvision', 'caffe'], 'Convert this format (file '
          'given as argument) into a checkpoint at --out.'),
      'to': flags.DEFINE_enum(
          'to', None, ['torchvision'], 'Convert the checkpoint given as '
          'argument into this format at --out.'),
      'out': flags.DEFINE_string('out', None, 'Output checkpoint dir or file.'),
  }


def main(argv: list[str], flag: cli.Flags) -> None:
  source, target, out = (flag[k].value for k in ('from', 'to', 'out'))
  if len(argv) != 2 or (source is None) == (target is None):
    raise app.UsageError('give exactly one of --from=FORMAT FILE or '
                         '--to=FORMAT CKPT_DIR, and --out')
  if not out:
    raise app.UsageError('--out is required')
  if source:
    pretrained.convert_from(source, argv[1], out)
  else:
    pretrained.convert_to_torchvision(argv[1], out)
  print(f'wrote {os.path.abspath(out)}')


if __name__ == '__main__':
  cli.run(main, define_flags)
