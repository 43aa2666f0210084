"""Entry point: `python -m alexnet_jax.main --config=CONFIG --workdir=DIR`.

Trains (resuming from DIR's checkpoints if any) or, with --eval_only,
evaluates a checkpoint. Config fields can be overridden on the command line:
`--config.batch_size=256`.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where logs and checkpoints '
                               'go; shared by all processes on multi-host.')
_EVAL_ONLY = flags.DEFINE_bool('eval_only', False,
                               'Evaluate a checkpoint instead of training.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'With --eval_only: a workdir, checkpoints dir or step '
    'dir (default: the latest in --workdir).')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() (multi-host); '
    'it reads the coordinator from the cluster environment.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  # Decide devices before JAX initialises; TF must never claim a GPU.
  from alexnet_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.request_cpu_devices(config.num_devices)
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(),
               jax.process_count(), jax.devices())
  try:
    if _EVAL_ONLY.value:
      train.evaluate_checkpoint(config, _CHECKPOINT.value or _WORKDIR.value,
                                _WORKDIR.value)
    else:
      train.train_and_evaluate(config, _WORKDIR.value)
  except (FileNotFoundError, FloatingPointError) as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
