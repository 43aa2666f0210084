"""Entry point: `python -m alexnet_jax.main --config=CONFIG --workdir=DIR`.

Trains (resuming from DIR's checkpoints if any) or, with --eval_only,
evaluates a checkpoint. Config fields can be overridden on the command line:
`--config.batch_size=256`.

Multi-host (JAX's multi-controller runtime): start the same command once per
process with --distributed. On Cloud TPU, SLURM and Open MPI the coordinator,
process count and process id come from the cluster environment; elsewhere
pass --coordinator_address, --num_processes and --process_id (see
launch/local_multiprocess.sh). Every process reads its own shard of the data
and writes its shards of each checkpoint, so DIR must be one directory that
all processes share (a network filesystem or a bucket); only process 0
writes logs, metrics and DIR/config.json.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alexnet_jax import config_check
from alexnet_jax import multihost
from alexnet_jax import parallel
from alexnet_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where logs and checkpoints '
                               'go; shared by all processes on multi-host.')
_EVAL_ONLY = flags.DEFINE_bool('eval_only', False,
                               'Evaluate a checkpoint instead of training.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'With --eval_only: a workdir, checkpoints dir or step '
    'dir (default: the latest in --workdir).')
_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Compile the train and eval steps for the configured '
    'mesh, print placement and memory per device, and exit.')
_TOPOLOGY = flags.DEFINE_string(
    'topology', None, 'With --dry_run: compile for this TPU slice (e.g. '
    "v5e:4x4) instead of this host's devices; needs only the TPU runtime.")
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() (multi-host). '
    'Without the three flags below it reads the cluster environment '
    '(Cloud TPU, SLURM, Open MPI; JAX_COORDINATOR_ADDRESS).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'With --distributed: host:port of process '
    '0, reachable from every process.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'With --distributed: how many processes in all.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'With --distributed: this process, 0..num_processes-1.')


def _start_jax(num_devices: int) -> None:
  """Before any JAX backend starts: the compilation cache, then this
  process's devices (with --distributed, its share of them)."""
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):  # Recompile only once.
    jax.config.update('jax_compilation_cache_dir',
                      os.path.expanduser('~/.cache/alexnet_jax/xla'))
  if _DISTRIBUTED.value:
    multihost.initialize(num_devices, _COORDINATOR.value,
                         _NUM_PROCESSES.value, _PROCESS_ID.value)
  else:
    parallel.request_cpu_devices(num_devices)


def _write_config(config, workdir: str) -> None:
  """DIR/config.json (process 0): what the report reads back."""
  train.prepare_workdir(workdir)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def _dry_run(config) -> None:
  from alexnet_jax import topology  # pylint: disable=g-import-not-at-top
  try:
    print('\n'.join(topology.dry_run(config, _TOPOLOGY.value)))
  except ValueError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)


def _quiet_library_logs() -> None:
  """Warnings and errors only, unless -v is given: orbax alone logs some
  twenty INFO lines per checkpoint, which would bury the progress lines."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _DRY_RUN.value:
    _dry_run(_CONFIG.value)
    return
  if not (_WORKDIR.value or (_EVAL_ONLY.value and _CHECKPOINT.value)):
    raise app.UsageError('--workdir is required (or --eval_only with '
                         '--checkpoint)')
  config = _CONFIG.value
  _start_jax(config.num_devices)
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(),
               jax.process_count(), jax.devices())
  _quiet_library_logs()
  try:
    if jax.process_count() > 1 and _WORKDIR.value:
      multihost.check_shared_workdir(_WORKDIR.value)
    if _EVAL_ONLY.value:
      train.evaluate_checkpoint(config, _CHECKPOINT.value or _WORKDIR.value,
                                _WORKDIR.value)
    else:
      if jax.process_index() == 0 and _WORKDIR.value:
        _write_config(config, _WORKDIR.value)
      train.train_and_evaluate(config, _WORKDIR.value)
  except (ValueError, OSError, FloatingPointError) as error:
    logging.debug('full traceback', exc_info=True)  # Shown with -v=1.
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=config_check.parse_flags)
