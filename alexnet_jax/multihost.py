"""Multi-host set-up: joining JAX's multi-controller runtime, and checking
that every process sees the same workdir.

`main --distributed` calls `initialize` before any JAX backend starts, then
`check_shared_workdir`. `tests/test_multiprocess.py` runs both in real
processes (launch/local_multiprocess.sh).
"""

import math
import os
import secrets

import jax
from jax.experimental import multihost_utils
import numpy as np

from alexnet_jax import parallel


def initialize(num_devices: int, coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the multi-controller runtime before any backend starts.

  Without the three optional arguments JAX reads the cluster environment
  (Cloud TPU, SLURM, Open MPI). On a CPU-only host each process simulates
  its share of the `num_devices` configured devices, and cross-process
  collectives go over gloo (TCP).
  """
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if num_processes:
    parallel.request_cpu_devices(math.ceil(num_devices / num_processes))
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


def check_shared_workdir(workdir: str) -> None:
  """Fails on every process unless all of them see the same `workdir`.

  Orbax writes each process's shards of a checkpoint into the workdir, so a
  directory that is local to each host gives checkpoints no process can
  restore. Process 0 writes a marker with a fresh token; after a barrier
  every process looks for it, and all learn whether any could not.
  """
  token = int(multihost_utils.broadcast_one_to_all(
      np.int64(secrets.randbits(62))))
  marker = os.path.join(workdir, '.shared_workdir_check')
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(marker, 'w') as f:
      f.write(str(token))
  multihost_utils.sync_global_devices('alexnet_jax: marker written')
  try:
    with open(marker) as f:
      sees = f.read() == str(token)
  except OSError:
    sees = False
  blind = np.flatnonzero(~multihost_utils.process_allgather(np.array(sees)))
  if jax.process_index() == 0:
    os.remove(marker)
  if blind.size:
    raise FileNotFoundError(
        f'--workdir: processes {blind.tolist()} cannot see {marker}, written '
        f'by process 0; multi-host runs need a workdir that every process '
        f'shares (checkpoints are written by all of them)')
