"""The pictures of the paper's section 6.1 from any checkpoint.

  python -m alexnet_jax.tools.visualize --checkpoint=CKPT --out=DIR
  python -m alexnet_jax.tools.visualize --checkpoint=CKPT --out=DIR \\
      --config=configs/demo.py

Always writes `conv1_kernels.png` (Figure 3: the conv1 kernels, one block
per tower) and prints the towers' colour specificity (see `towers`) as one
line, `color_specificity <tower0> <tower1> ...`. With `--config`, whose
dataset it reads (the input conventions stay the checkpoint's), it also
writes `top5.png` (Figure 4 left: validation images with the five most
probable classes, the true class's bar in red) and `nearest_neighbors.png`
(Figure 4 right: validation images, each followed by the training images
whose last hidden layer (fc7, after its ReLU, all towers) is closest to
theirs). Distances are Euclidean (the paper's) or, with
`--distance=cosine`, one minus the cosine similarity; neighbours are
searched among the first `--max_train_images` training images of epoch 0's
shuffled order.

The checkpoint may come from any mode or device count: it is restored onto
one device.
"""


from absl import app
from absl import flags

from alexnet_jax import cli
from alexnet_jax.analysis import features


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.visualize`."""
  return {
      'config': cli.config_flag(
          None, 'Optional experiment config whose dataset gives the top-5 '
          'and nearest-neighbour figures.'),
      'checkpoint': flags.DEFINE_string(
          'checkpoint', None, 'A workdir, checkpoints dir or step dir.'),
      'out': flags.DEFINE_string('out', None, 'Directory for the PNG files.'),
      'max_train_images': flags.DEFINE_integer(
          'max_train_images', 2000,
          'Training images searched for neighbours (epoch 0 order).'),
      'max_val_images': flags.DEFINE_integer(
          'max_val_images', 500, 'Validation images read; queries and top-5 '
          'images are spread over them.'),
      'num_queries': flags.DEFINE_integer(
          'num_queries', 5,
          'Validation images in the nearest-neighbour figure.'),
      'num_neighbors': flags.DEFINE_integer(
          'num_neighbors', 6, 'Neighbours per query.'),
      'num_top5': flags.DEFINE_integer(
          'num_top5', 8, 'Images in the top-5 figure.'),
      'distance': flags.DEFINE_enum(
          'distance', 'l2', features.DISTANCES, 'Distance between fc7 vectors: '
          'Euclidean or one minus the cosine similarity.'),
  }


def main(argv: list[str], flag: cli.Flags) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  value = {name: holder.value for name, holder in flag.items()}
  if not value['checkpoint'] or not value['out']:
    raise app.UsageError('usage: visualize --checkpoint=CKPT --out=DIR '
                         '[--config=CONFIG]')
  result = features.visualize(
      value['checkpoint'], value['out'], value['config'],
      max_train_images=value['max_train_images'],
      max_val_images=value['max_val_images'],
      num_queries=value['num_queries'], num_neighbors=value['num_neighbors'],
      num_top5=value['num_top5'], distance=value['distance'])
  print('color_specificity ' + ' '.join(
      f'{s:.4f}' for s in result['color_specificity']))
  if 'train_images' in result:
    print(f'fc7 neighbours among {result["train_images"]} training images '
          f'for {result["val_images"]} validation images read; '
          f'{result["skipped"]} undecodable files skipped')
  for path in result['written']:
    print(f'wrote {path}')


if __name__ == '__main__':
  cli.run(main, define_flags)
