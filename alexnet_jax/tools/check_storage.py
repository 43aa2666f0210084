r"""Checks, before a run, that a workdir or data location works from here.

  python -m alexnet_jax.tools.check_storage gs://BUCKET/run [LOCATION ...]

A run reaches a workdir through three clients: TensorFlow's filesystem
(config.json, metrics.jsonl, TensorBoard, prepared data), tensorstore
(orbax's checkpoint arrays) and, in a bucket, google-cloud-storage (the
hold that keeps a second run out). For each location this writes, reads,
lists and removes a probe through each of them, with the credentials this
machine has, and prints one line per check with its time, so that missing
permissions or a wrong bucket name show up here, not an hour into a paid
TPU slice. Run it on the machine that will train (one TPU VM worker) or
any machine with the same service account. Exits non-zero if a check
fails.
"""

import time
import uuid

from absl import app
import jax
import numpy as np

from alexnet_jax import checkpoint
from alexnet_jax import cli
from alexnet_jax import storage


def _files(probe: str) -> None:
  storage.makedirs(probe)
  path = storage.join(probe, 'probe.json')
  storage.write_json(path, {'probe': 1})
  if storage.read_json(path) != {'probe': 1}:
    raise OSError(f'{path} did not read back what was written')
  if 'probe.json' not in storage.listdir(probe):
    raise OSError(f'{path} is not listed in {probe}')


def _checkpoint(probe: str) -> None:
  mngr = checkpoint.manager(storage.join(probe, 'checkpoints'))
  try:
    params = {'w': jax.numpy.arange(1024, dtype=jax.numpy.float32)}
    checkpoint.save(mngr, 1, params=params, meta={'probe': 1})
    checkpoint.wait_until_finished(mngr)
    like = {'w': jax.ShapeDtypeStruct((1024,), np.float32,
                                      sharding=params['w'].sharding)}
    restored = checkpoint.restore(mngr, 1, params_like=like)['params']
    if not np.array_equal(restored['w'], params['w']):
      raise OSError('the checkpoint did not read back what was written')
  finally:
    mngr.close()


def _hold(probe: str) -> None:
  hold = storage.WorkdirHold(probe)
  hold.acquire()
  hold.release()


CHECKS = (('files (TensorFlow: config, metrics, TensorBoard, data)', _files),
          ('checkpoint (arrays through tensorstore)', _checkpoint),
          ('run hold (one run per workdir)', _hold))


def check(location: str) -> bool:
  """Prints one line per check; whether all passed."""
  location = storage.check_location(location, 'location')
  probe = storage.join(location, f'.check_storage-{uuid.uuid4().hex[:8]}')
  passed = True
  for name, run in CHECKS:
    begin = time.perf_counter()
    try:
      run(probe)
      result = 'ok'
    except Exception as error:  # pylint: disable=broad-except
      result, passed = f'FAILED: {checkpoint.one_line(error)}', False
    print(f'{location}: {name}: {result} '
          f'({time.perf_counter() - begin:.2f} s)', flush=True)
  try:
    storage.rmtree(probe)
  except Exception:  # pylint: disable=broad-except
    pass  # Whatever was written failed already, and said so.
  return passed


def define_flags() -> cli.Flags:
  return {}


def main(argv: list[str], flag: cli.Flags) -> None:
  del flag
  if len(argv) < 2:
    raise app.UsageError('give at least one location (gs://BUCKET/PATH or '
                         'a local path)')
  results = [check(location) for location in argv[1:]]
  if not all(results):
    raise OSError('some checks failed (above); a run there would fail too')


if __name__ == '__main__':
  cli.run(main, define_flags)
