r"""Stores a dataset's base images once, as JPEGs in a few large shard files.

  python -m alexnet_jax.tools.prepare --config=configs/two_tower.py --out=DIR \
      [--config.dataset=folder:ROOT] [--quality=90] [--workers=N] \
      [--process_index=i --process_count=P]

Then train with `--config.dataset=prepared:DIR`. The format, resumption and
multi-host use are described in `alexnet_jax/data/prepare.py`.
`--verify` (same config, --out and hosts) checks every shard instead, prints
a line per damaged or missing one and `damaged_shards N`, and rewrites them
from the source where it is available; its exit status is 1 while damaged
shards remain.
`--measure_quality=75,85,90,95` only measures the PSNR and size of the
stored images at those qualities on `--sample` training images.
"""

import sys

from absl import app
from absl import flags

from alexnet_jax import cli
from alexnet_jax.data import prepare
from alexnet_jax.data import sources


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.prepare`."""
  return {
      'config': cli.config_flag(),
      'out': flags.DEFINE_string(
          'out', None, 'Output directory (or bucket path).'),
      'quality': flags.DEFINE_integer(
          'quality', 90,
          'JPEG quality of the stored images (see docs/data.md, '
          '"Prepared data", for the measured choice).'),
      'examples_per_shard': flags.DEFINE_integer(
          'examples_per_shard', 1024, 'Images per shard file (about).'),
      'workers': flags.DEFINE_integer(
          'workers', None,
          'Processes (default: every core; 1: this process).'),
      'process_index': flags.DEFINE_integer(
          'process_index', 0, 'This host, 0..process_count-1.'),
      'process_count': flags.DEFINE_integer(
          'process_count', 1, 'Hosts preparing together.'),
      'measure_quality': flags.DEFINE_list(
          'measure_quality', None,
          'Only measure PSNR and size at these qualities.'),
      'sample': flags.DEFINE_integer(
          'sample', 200, 'Images for --measure_quality.'),
      'verify': flags.DEFINE_bool(
          'verify', False, 'Check every shard of --out (this host\'s) and '
          'rewrite the damaged ones from the source.'),
      'tfds_only': flags.DEFINE_bool(
          'tfds_only', False, "Only run TFDS's download_and_prepare (needed "
          'once before a multi-host run reads a TFDS dataset directly).'),
  }


def main(argv: list[str], flag: cli.Flags) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = flag['config'].value
  if flag['measure_quality'].value:
    print('quality  PSNR dB (all pixels)  mean  min  KB/image')
    qualities = [int(q) for q in flag['measure_quality'].value]
    for row in prepare.measure_quality(config, qualities,
                                       flag['sample'].value):
      print(f'{row["quality"]:7d}  {row["psnr_db"]:20.2f}  '
            f'{row["psnr_mean_db"]:.2f}  {row["psnr_min_db"]:.2f}  '
            f'{row["kb"]:.1f}')
    return
  if flag['tfds_only'].value:
    sources.prepare_tfds(config)
    print(f'{config.dataset} is prepared')
    return
  out = flag['out'].value
  if not out:
    raise app.UsageError('--out is required')
  if not 0 <= flag['process_index'].value < flag['process_count'].value:
    raise ValueError('--process_index must be in [0, --process_count)')
  if flag['verify'].value:
    _verify(config, out, flag)
    return
  index = prepare.prepare(config, out, quality=flag['quality'].value,
                          examples_per_shard=flag['examples_per_shard'].value,
                          workers=flag['workers'].value,
                          process_index=flag['process_index'].value,
                          process_count=flag['process_count'].value)
  if index is not None:
    print(prepare.summary(index))
    print(f'train with --config.dataset=prepared:{out}')


def _verify(config, out: str, flag: cli.Flags) -> None:
  """Runs `prepare.verify`; exit status 1 if damaged shards remain."""
  found = prepare.verify(config, out, workers=flag['workers'].value,
                         process_index=flag['process_index'].value,
                         process_count=flag['process_count'].value)
  print(f'damaged_shards {len(found.damaged)}')
  if len(found.rewritten) < len(found.damaged):
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main, define_flags, required=['config'])
