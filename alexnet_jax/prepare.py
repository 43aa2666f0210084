r"""Stores a dataset's base images once, as JPEGs in a few large shard files.

  python -m alexnet_jax.prepare --config=configs/default.py --out=DIR \
      [--config.dataset=folder:ROOT] [--quality=90] [--workers=N] \
      [--process_index=i --process_count=P]

Then train with `--config.dataset=prepared:DIR`. The format, resumption and
multi-host use are described in `alexnet_jax/data/prepare.py`.
`--measure_quality=75,85,90,95` only measures the PSNR and size of the
stored images at those qualities on `--sample` training images.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax.data import prepare

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.',
                                          lock_config=True)
_OUT = flags.DEFINE_string('out', None, 'Output directory (or bucket path).')
_QUALITY = flags.DEFINE_integer(
    'quality', 90, 'JPEG quality of the stored images (see README, "Data").')
_EXAMPLES_PER_SHARD = flags.DEFINE_integer(
    'examples_per_shard', 1024, 'Images per shard file (about).')
_WORKERS = flags.DEFINE_integer(
    'workers', None, 'Processes (default: every core; 1: this process).')
_PROCESS_INDEX = flags.DEFINE_integer('process_index', 0,
                                      'This host, 0..process_count-1.')
_PROCESS_COUNT = flags.DEFINE_integer('process_count', 1,
                                      'Hosts preparing together.')
_MEASURE_QUALITY = flags.DEFINE_list(
    'measure_quality', None, 'Only measure PSNR and size at these qualities.')
_SAMPLE = flags.DEFINE_integer('sample', 200,
                               'Images for --measure_quality.')
_TFDS_ONLY = flags.DEFINE_bool(
    'tfds_only', False, "Only run TFDS's download_and_prepare (needed once "
    'before a multi-host run reads a TFDS dataset directly).')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  try:
    if _MEASURE_QUALITY.value:
      print('quality  PSNR dB (all pixels)  mean  min  KB/image')
      qualities = [int(q) for q in _MEASURE_QUALITY.value]
      for row in prepare.measure_quality(config, qualities, _SAMPLE.value):
        print(f'{row["quality"]:7d}  {row["psnr_db"]:20.2f}  '
              f'{row["psnr_mean_db"]:.2f}  {row["psnr_min_db"]:.2f}  '
              f'{row["kb"]:.1f}')
      return
    if _TFDS_ONLY.value:
      from alexnet_jax.data import sources  # pylint: disable=g-import-not-at-top
      sources.prepare_tfds(config)
      print(f'{config.dataset} is prepared')
      return
    if not _OUT.value:
      raise app.UsageError('--out is required')
    if not 0 <= _PROCESS_INDEX.value < _PROCESS_COUNT.value:
      raise ValueError('--process_index must be in [0, --process_count)')
    index = prepare.prepare(config, _OUT.value, quality=_QUALITY.value,
                            examples_per_shard=_EXAMPLES_PER_SHARD.value,
                            workers=_WORKERS.value,
                            process_index=_PROCESS_INDEX.value,
                            process_count=_PROCESS_COUNT.value)
  except (ValueError, OSError) as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)
  if index is not None:
    print(prepare.summary(index))
    print(f'train with --config.dataset=prepared:{_OUT.value}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
