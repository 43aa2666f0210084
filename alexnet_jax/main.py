"""Entry point: `python -m alexnet_jax.main --config=CONFIG --workdir=DIR`.

Trains (resuming from DIR's checkpoints if any) or, with --eval_only,
evaluates a checkpoint. Config fields can be overridden on the command line:
`--config.batch_size=256`.

Multi-host (JAX's multi-controller runtime): start the same command once per
process with --distributed. On Cloud TPU, SLURM and Open MPI the coordinator,
process count and process id come from the cluster environment; elsewhere
pass --coordinator_address, --num_processes and --process_id (see
launch/local_multiprocess.sh). Each process runs the training in a child
of itself, so that whatever ends it, its last line says why; SIGTERM or
SIGINT to any process saves one step common to all, and a lost process
stops the others within --lost_process_timeout seconds. Every process
reads its own shard of the data and writes its shards of each checkpoint,
so DIR must be one directory that all processes share (a network
filesystem or a bucket); only process 0 writes logs, metrics and
DIR/config.json.
"""

import sys

from alexnet_jax import supervisor

if __name__ == '__main__' and supervisor.wanted(sys.argv[1:]):
  # Before the imports below: the parent only waits for its child, which
  # imports JAX and TensorFlow itself.
  sys.exit(supervisor.supervise(supervisor.workdir_in(sys.argv[1:])))

import contextlib
import os
from typing import Iterator

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
from ml_collections import config_flags
import numpy as np

from alexnet_jax import cli
from alexnet_jax import logs
from alexnet_jax import multihost
from alexnet_jax import parallel
from alexnet_jax import storage
from alexnet_jax import train
from alexnet_jax.analysis import compiled
from alexnet_jax.analysis import towers
from alexnet_jax.analysis import trace


def _start_jax(num_devices: int, flag: cli.Flags) -> None:
  """Before any JAX backend starts: the compilation cache, then this
  process's devices (with --distributed, its share of them)."""
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):  # Recompile only once.
    jax.config.update('jax_compilation_cache_dir',
                      os.path.expanduser('~/.cache/alexnet_jax/xla'))
  if flag['distributed'].value:
    multihost.initialize(num_devices, flag['coordinator_address'].value,
                         flag['num_processes'].value, flag['process_id'].value,
                         flag['lost_process_timeout'].value)
  else:
    parallel.request_cpu_devices(num_devices)


def _write_config(config, workdir: str) -> None:
  """DIR/config.json (process 0): what the report reads back."""
  train.prepare_workdir(workdir)
  storage.write_text(storage.join(workdir, 'config.json'),
                     config.to_json_best_effort(indent=2, sort_keys=True))


@contextlib.contextmanager
def _hold(workdir: str | None) -> Iterator[None]:
  """Holds `workdir` for this run (process 0 for every process of it), or
  stops every process in one line when another live run holds it."""
  if not workdir:
    yield
    return
  hold, refused = storage.WorkdirHold(workdir), None
  if jax.process_index() == 0:
    try:
      hold.acquire()
    except storage.WorkdirHeld as error:
      refused = error
  if jax.process_count() > 1:
    held_elsewhere = multihost_utils.broadcast_one_to_all(
        np.int32(refused is not None))
    if int(held_elsewhere) and refused is None:
      refused = storage.WorkdirHeld(
          f'--workdir: {workdir} is in use by another run (process 0 says '
          'which)')
  if refused is not None:
    raise refused
  try:
    yield
  finally:
    hold.release()


def _dry_run(config, topology_name: str | None) -> None:
  print('\n'.join(compiled.dry_run(config, topology_name)))


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.main`."""
  return {
      'config': cli.config_flag(),
      'workdir': flags.DEFINE_string(
          'workdir', None, 'Where logs and checkpoints go; shared by all '
          'processes on multi-host.'),
      'eval_only': flags.DEFINE_bool(
          'eval_only', False, 'Evaluate a checkpoint instead of training.'),
      'checkpoint': flags.DEFINE_string(
          'checkpoint', None, 'With --eval_only: a workdir, checkpoints dir '
          'or step dir (default: the latest in --workdir).'),
      'dry_run': flags.DEFINE_bool(
          'dry_run', False, 'Compile the train and eval steps for the '
          'configured mesh, print placement and memory per device, and '
          'exit.'),
      'topology': flags.DEFINE_string(
          'topology', None, 'With --dry_run: compile for this TPU slice (e.g. '
          'v5e:4x4; needs only the TPU runtime) or these NVIDIA GPU nodes '
          '(GPU:HOSTSxGPUS, GPU one of a100, h100, h200, e.g. h100:2x8; '
          "needs only pip install -e '.[gpu_compile]') instead of this "
          "host's devices."),
      'distributed': flags.DEFINE_bool(
          'distributed', False, 'Call jax.distributed.initialize() '
          '(multi-host). Without the three flags below it reads the cluster '
          'environment (Cloud TPU, SLURM, Open MPI; JAX_COORDINATOR_ADDRESS).'),
      'coordinator_address': flags.DEFINE_string(
          'coordinator_address', None, 'With --distributed: host:port of '
          'process 0, reachable from every process.'),
      'num_processes': flags.DEFINE_integer(
          'num_processes', None,
          'With --distributed: how many processes in all.'),
      'process_id': flags.DEFINE_integer(
          'process_id', None,
          'With --distributed: this process, 0..num_processes-1.'),
      'lost_process_timeout': flags.DEFINE_integer(
          'lost_process_timeout', multihost.DEFAULT_LOST_PROCESS_TIMEOUT,
          'With --distributed: seconds within which the other processes '
          'stop, in one line, after one is lost (killed, preempted, its host '
          'down); the coordination service\'s heartbeat timeout.'),
  }


def main(argv: list[str], flag: cli.Flags) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config, workdir = flag['config'].value, flag['workdir'].value
  if workdir:
    workdir = storage.check_location(workdir, '--workdir')
  checkpoint_path = flag['checkpoint'].value
  if checkpoint_path:
    checkpoint_path = storage.check_location(checkpoint_path, '--checkpoint')
  if flag['dry_run'].value:
    _dry_run(config, flag['topology'].value)
    return
  eval_only = flag['eval_only'].value
  if not (workdir or (eval_only and checkpoint_path)):
    raise app.UsageError('--workdir is required (or --eval_only with '
                         '--checkpoint)')
  if flag['distributed'].value and not supervisor.is_supervised():
    # --distributed from a --flagfile, which `supervisor.wanted` cannot see.
    sys.exit(supervisor.supervise(workdir))
  _start_jax(config.num_devices, flag)
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(),
               jax.process_count(), jax.devices())
  logs.console(logs.run_line(
      config, config_flags.get_config_filename(flags.FLAGS['config']),
      workdir, eval_only=eval_only, checkpoint=checkpoint_path))
  with multihost.watch_for_lost_processes(
      workdir, flag['lost_process_timeout'].value):
    if jax.process_count() > 1 and workdir:
      multihost.check_shared_workdir(workdir)
    with _hold(workdir):
      if eval_only:
        train.evaluate_checkpoint(config, checkpoint_path or workdir, workdir)
      else:
        if jax.process_index() == 0:
          _write_config(config, workdir)
        train.train_and_evaluate(config, workdir,
                                 on_evaluate=(towers.conv1_hook,),
                                 on_profiled=trace.profile_hook)


if __name__ == '__main__':
  cli.run(main, define_flags, required=['config'],
          errors=(ValueError, OSError, FloatingPointError))
