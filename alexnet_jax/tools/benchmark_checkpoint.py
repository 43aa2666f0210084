r"""Measures how long a checkpoint save stalls the train loop, at a location.

  python -m alexnet_jax.tools.benchmark_checkpoint --config=configs/demo.py \
      --location=/tmp/ckpt_bench [--saves=5] [--steps_between=5]
  python -m alexnet_jax.tools.benchmark_checkpoint --config=configs/demo.py \
      --location=gs://BUCKET/ckpt_bench

Runs the real train step on a device-resident batch and saves a training
checkpoint (parameters, optimizer state, progress) every `--steps_between`
steps, as the trainer does. Saves are asynchronous: the loop waits for the
arrays to be copied to the host, then goes on while orbax writes (and at
the next save, for this one to finish: here each save starts after the
previous one is done, as in training, where saves are far apart).
`save_stall_seconds` is the median time the loop spent in a save call;
`save_seconds` the time from a save's start until it was complete at the
location (the last save, waited for). The location's checkpoints are
deleted afterwards.
"""

import statistics
import time
import uuid

from absl import flags
import jax

from alexnet_jax import checkpoint
from alexnet_jax import cli
from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax import storage


def time_saves(config, location: str, saves: int,
               steps_between: int) -> dict[str, float]:
  """Seconds the loop stalls per save, and the last save's full time."""
  step = steps.resident_train_step(config, config.batch_size)
  step()  # Compiles.
  meta = checkpoint.spec_meta(parallel.spec_of(config))
  mngr = checkpoint.manager(location, keep=2)
  stalls = []
  try:
    for i in range(1, saves + 1):
      for _ in range(steps_between):
        step()
      # As in training, where saves are far apart: the previous one is done.
      checkpoint.wait_until_finished(mngr)
      begin = time.perf_counter()
      checkpoint.save(mngr, i, params=step.state.params,
                      opt_state=step.state.opt_state, meta=meta,
                      progress={'data': {'epoch': 0, 'examples': i},
                                'lr_policy': {}})
      stalls.append(time.perf_counter() - begin)
    checkpoint.wait_until_finished(mngr)
    begin = time.perf_counter()
    checkpoint.save(mngr, saves + 1, params=step.state.params,
                    opt_state=step.state.opt_state, meta=meta,
                    progress={'data': {}, 'lr_policy': {}})
    checkpoint.wait_until_finished(mngr)
    whole = time.perf_counter() - begin
  finally:
    mngr.close()
    storage.rmtree(location)
  return {'stall': statistics.median(stalls), 'slowest': max(stalls),
          'whole': whole,
          'bytes': checkpoint.checkpoint_bytes(step.state.params,
                                               step.state.opt_state)}


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.benchmark_checkpoint`."""
  return {
      'config': cli.config_flag('configs/demo.py'),
      'location': flags.DEFINE_string(
          'location', None, 'A local directory or gs://BUCKET/PATH; a fresh '
          'folder is made in it and removed afterwards.'),
      'saves': flags.DEFINE_integer('saves', 5, 'Saves to time.'),
      'steps_between': flags.DEFINE_integer(
          'steps_between', 5, 'Train steps between two saves.'),
  }


def main(argv: list[str], flag: cli.Flags) -> None:
  del argv
  config = flag['config'].value
  if flag['saves'].value < 1 or flag['steps_between'].value < 0:
    raise ValueError('--saves: at least 1; --steps_between: at least 0')
  location = storage.join(
      storage.check_location(flag['location'].value, '--location'),
      f'bench-{uuid.uuid4().hex[:8]}')
  parallel.request_cpu_devices(config.num_devices)
  figures = time_saves(config, location, flag['saves'].value,
                       flag['steps_between'].value)
  print(f'{config.mode} mode, {config.num_devices} x '
        f'{jax.devices()[0].device_kind}, checkpoint '
        f'{figures["bytes"] / 2**20:.1f} MiB, {flag["saves"].value} saves '
        f'into {location}')
  print(f'save_stall_seconds {figures["stall"]:.4f} (slowest '
        f'{figures["slowest"]:.4f})')
  print(f'save_seconds {figures["whole"]:.3f}')


if __name__ == '__main__':
  cli.run(main, define_flags, required=['location'])
