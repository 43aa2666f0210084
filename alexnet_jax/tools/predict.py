"""Top-5 classes of images under a checkpoint's own input conventions.

  python -m alexnet_jax.tools.predict --checkpoint=CKPT_DIR cat.jpg dog.png
  python -m alexnet_jax.tools.predict --checkpoint=CKPT_DIR batch.npy \
      --out=x.npz
  python -m alexnet_jax.tools.predict --checkpoint=CKPT_DIR cat.jpg \
      --plot=top5.png

Images (JPEG, PNG, anything TensorFlow decodes) get the evaluation
transform the checkpoint's meta records (resize, centre crop, mean, scale,
channel order); a `.npy` file holds images already in that convention,
float32 [N, H, W, 3] (or one [H, W, 3]). Class names come from TFDS when the
checkpoint's dataset is a TFDS dataset (for imagenet2012: WordNet ids, the
class order torchvision and Caffe use too); otherwise classes are printed by
index.
"""

from absl import app
from absl import flags
import numpy as np

from alexnet_jax import cli
from alexnet_jax import storage
from alexnet_jax.analysis import features
from alexnet_jax.analysis import inference


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.predict`."""
  return {
      'checkpoint': flags.DEFINE_string(
          'checkpoint', None, 'A workdir, checkpoints dir or step dir.'),
      'out': flags.DEFINE_string(
          'out', None, 'Also save the logits (input order) and input names '
          'to this .npz file.'),
      'plot': flags.DEFINE_string(
          'plot', None, 'Also draw each image with its top-5 classes as bars '
          'into this PNG file.'),
  }


def main(argv: list[str], flag: cli.Flags) -> None:
  ckpt, out, plot = (flag[k].value for k in ('checkpoint', 'out', 'plot'))
  if len(argv) < 2 or not ckpt:
    raise app.UsageError('usage: predict --checkpoint=CKPT_DIR FILE...')
  logits, names, labels = inference.predict(ckpt, argv[1:])
  for name, row in zip(names, logits):
    print('\n'.join(inference.top_k_lines(name, row, labels)))
  if out:
    out = storage.check_location(out, '--out')
    if not out.endswith('.npz'):  # As numpy.savez names a path.
      out += '.npz'
    with storage.writer(out) as f:
      np.savez(f, logits=logits, inputs=np.array(names))
  if plot:
    features.plot_predictions(ckpt, argv[1:], names, logits, labels, plot)


if __name__ == '__main__':
  cli.run(main, define_flags)
