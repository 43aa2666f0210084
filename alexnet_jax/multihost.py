"""Multi-host set-up and failure handling: joining JAX's multi-controller
runtime, checking that every process sees the same workdir, stopping every
process at one step on a signal (`StopRequest`), and ending the run in one
line when a process is lost.

`main --distributed` runs itself under `supervisor` (a parent that outlives
runtime aborts), calls `initialize` before any JAX backend starts, then
`check_shared_workdir`, and trains inside `watch_for_lost_processes`.
`tests/test_resume_reshape.py` runs them in real processes, and
`tests/test_preemption.py` kills and signals processes started one by one.

A lost process is noticed through the coordination service's heartbeats.
Running the service as "recoverable" keeps it from aborting every survivor
with a C++ stack trace; instead each survivor's watchdog asks it which
processes are live, says which one was lost and where the same command
resumes, and exits. When the lost process is process 0, which hosts the
service, the runtime aborts the survivors at once; their `supervise`
parents say so.
"""

import contextlib
import math
import os
import secrets
import signal
import sys
import threading
import time
from typing import Callable, Iterator

import jax
from jax._src import distributed as _jax_distributed
from jax.experimental import multihost_utils
import numpy as np

from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax import storage
from alexnet_jax import supervisor

DEFAULT_LOST_PROCESS_TIMEOUT = 30  # Seconds.
_POLL_SECONDS = 0.5
_SHUTDOWN_GRACE = 1.0  # Seconds.
# Failed liveness queries in a row (while the coordinator's address still
# answers) before the service's error ends the process.
_QUERY_ATTEMPTS = 3
# How long processes that finished wait for the others (a final evaluation).
_FINISH_SECONDS = 10 * 60


def _coordination() -> tuple[object | None, str | None]:
  """The coordination service's client and the coordinator's address, or
  Nones before `initialize`.

  The one use of JAX's private distributed state: the public API has no
  way to them (`jax.distributed` offers initialize, is_initialized and
  shutdown; `multihost_utils.live_devices` is an unstable transaction over
  devices, not a liveness poll, and there is no barrier with a deadline).
  """
  state = _jax_distributed.global_state
  return state.client, state.coordinator_address


def initialize(num_devices: int, coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               lost_process_timeout: int = DEFAULT_LOST_PROCESS_TIMEOUT
               ) -> None:
  """Joins the multi-controller runtime before any backend starts.

  Without the three optional arguments JAX reads the cluster environment
  (Cloud TPU, SLURM, Open MPI). On a CPU-only host each process simulates
  its share of the `num_devices` configured devices, and cross-process
  collectives go over gloo (TCP). A process that sends no heartbeat for
  `lost_process_timeout` - 1 seconds counts as lost, so that the others,
  whose watchdogs poll twice a second, stop within `lost_process_timeout`.
  """
  if lost_process_timeout < 2:
    raise ValueError(f'--lost_process_timeout: {lost_process_timeout} s is '
                     'too short for heartbeats; at least 2')
  if supervisor.is_supervised():
    supervisor.die_with_parent()
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.config.update('jax_enable_recoverability', True)
  # Its SIGTERM handler would take the signal from train's, and its shutdown
  # resets SIGTERM to the default, so that a late one kills a saved run.
  jax.config.update('jax_enable_preemption_service', False)
  if num_processes:
    parallel.request_cpu_devices(math.ceil(num_devices / num_processes))
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id,
                             heartbeat_timeout_seconds=lost_process_timeout - 1)
  supervisor.tell(jax.process_index(), jax.process_count(),
                  _coordination()[1])


@contextlib.contextmanager
def watch_for_lost_processes(workdir: str | None,
                             timeout: int) -> Iterator[None]:
  """Ends this process in one line if another process is lost meanwhile.

  A watchdog thread asks the coordination service which processes are
  live; when one is missing it prints which, and where the same command
  resumes, and exits at once (the main thread may be blocked in a
  collective that will never complete). On leaving the block, normally or
  by an exception, every process waits for the others, so that no process
  that finished counts as lost; a lost one ends the wait through the
  watchdog. After an exception the wait is `timeout` seconds: enough for
  processes that fail alike (a non-finite loss, which every process sees)
  to meet; one that fails alone leaves then, and the others see it lost
  within their own `timeout`. A no-op with one process.
  """
  if jax.process_count() == 1:
    yield
    return
  client, _ = _coordination()
  done = threading.Event()
  watchdog = threading.Thread(target=_watch, args=(client, done, workdir),
                              daemon=True)
  watchdog.start()
  try:
    yield
  except BaseException:
    _leave_together(client, 'failed', timeout, timeout, done, watchdog)
    raise
  _leave_together(client, 'finished', _FINISH_SECONDS, timeout, done,
                  watchdog)


def _leave_together(client, why: str, seconds: int, timeout: int,
                    done: threading.Event,
                    watchdog: threading.Thread) -> None:
  """Waits for every process, stops the watchdogs, then leaves the runtime,
  process 0 last: it hosts the coordination service, which (recoverable)
  would not hold it back until the others have disconnected.

  The service answers a liveness query once every live process listed has
  asked too, or left; so process 0's queries return for good only when
  the others, whose watchdogs have stopped, have disconnected. Process 0
  waits for that (in a thread: a query blocks while a connected process
  does not ask) up to `timeout` seconds, and says so if it gives up.
  """
  together = _wait_for_all(client, f'alexnet_jax: {why}', seconds)
  done.set()
  if not together:  # Some process is still busy (the others failed alone).
    return
  if jax.process_index() == 0:
    watchdog.join()
    alone = threading.Thread(target=_until_alone, args=(client,),
                             daemon=True)
    alone.start()
    alone.join(timeout)
    if alone.is_alive():
      print(f'warning: other processes were still connected {timeout} s '
            'after the run ended; process 0 (the coordinator) leaves '
            'without them', file=sys.stderr, flush=True)
    time.sleep(_SHUTDOWN_GRACE)  # Their last replies are on the way.
  jax.distributed.shutdown()


def _until_alone(client) -> None:
  """Returns when process 0 is the only one connected."""
  everyone = list(range(jax.process_count()))
  while len(client.get_live_nodes(everyone)) > 1:
    time.sleep(_POLL_SECONDS / 10)


def _watch(client, done: threading.Event, workdir: str | None) -> None:
  """Polls the service until `done`; ends the process in one line when a
  process is lost, or when the service cannot be asked (which is process
  0's loss only when its address no longer answers)."""
  everyone = list(range(jax.process_count()))
  coordinator, failures = _coordination()[1], 0
  while not done.wait(_POLL_SECONDS):
    try:
      lost = sorted(set(everyone) - set(client.get_live_nodes(everyone)))
      what = (f'process {", ".join(map(str, lost))} of {len(everyone)} was '
              'lost (no heartbeat)')
      failures = 0
    except Exception as error:  # pylint: disable=broad-except
      failures += 1
      what = query_failure(error, len(everyone), failures, coordinator)
      lost = [0] if what else []
    if lost and not done.is_set():
      print(f'error: {what}; process {jax.process_index()} stopped. '
            f'{supervisor.resume_note(workdir)}', file=sys.stderr,
            flush=True)
      os._exit(supervisor.LOST_EXIT)  # pylint: disable=protected-access


def query_failure(error: Exception, count: int, failures: int,
                  coordinator: str | None) -> str | None:
  """What the `failures`-th failed liveness query in a row means: process
  0 is gone if the `coordinator` address it served does not answer;
  otherwise the service's own error, once it has failed `_QUERY_ATTEMPTS`
  times (None before: ask again). A killed process 0 closes its
  connections one by one, so its address can still answer for a moment
  after a query failed."""
  if coordinator and not supervisor.reachable(coordinator):
    return f'process 0 of {count} (the coordinator, {coordinator}) was lost'
  if failures < _QUERY_ATTEMPTS:
    return None
  first = (str(error).strip().splitlines() or [''])[0]
  return (f'the coordination service did not answer which processes are '
          f'live ({type(error).__name__}: {first})')


def _wait_for_all(client, name: str, seconds: int) -> bool:
  """A barrier that gives up after `seconds` (the watchdog may end it
  sooner); whether every process came."""
  try:
    client.wait_at_barrier(name, seconds * 1000)
  except Exception:  # pylint: disable=broad-except
    return False
  return True


def check_shared_workdir(workdir: str) -> None:
  """Fails on every process unless all of them see the same `workdir`.

  Orbax writes each process's shards of a checkpoint into the workdir, so a
  directory that is local to each host gives checkpoints no process can
  restore. Process 0 writes a marker with a fresh token; after a barrier
  every process looks for it, and all learn whether any could not.
  """
  token = int(multihost_utils.broadcast_one_to_all(
      np.int64(secrets.randbits(62))))
  marker = storage.join(workdir, '.shared_workdir_check')
  if jax.process_index() == 0:
    storage.makedirs(workdir)
    storage.write_text(marker, str(token))
  multihost_utils.sync_global_devices('alexnet_jax: marker written')
  try:
    sees = storage.read_text(marker) == str(token)
  except Exception:  # pylint: disable=broad-except
    sees = False
  blind = np.flatnonzero(~multihost_utils.process_allgather(np.array(sees)))
  if jax.process_index() == 0:
    storage.remove(marker)
  if blind.size:
    raise FileNotFoundError(
        f'--workdir: processes {blind.tolist()} cannot see {marker}, written '
        f'by process 0; multi-host runs need a workdir that every process '
        f'shares (checkpoints are written by all of them)')


class StopRequest:
  """Turns SIGTERM/SIGINT on any process into one step at which all stop.

  The handler only records the signal. With several processes, `agreed`
  (called after every step, by every process) starts a max over the
  processes' signal numbers, a collective of one number per device, and
  returns the previous step's result, which the devices have computed by
  then (as the metrics, it is read one step late). So every process reads
  the same answer after the same step, however far apart the signals
  arrived. With one process `agreed` returns the flag itself. After a
  multi-process stop the handlers stay: the signal another process got may
  still reach this one while it saves and leaves, and must not kill it.
  """

  def __init__(self, strategy: parallel.Strategy):
    self.signal = self.stopped = None
    self._previous = {}
    self._agree = _max_over_processes(strategy)
    self._pending = None

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def agreed(self) -> str | None:
    """The signal all processes stop for after this step, or None."""
    if self._agree is None:
      self.stopped = self.signal
    else:
      number = signal.Signals[self.signal].value if self.signal else 0
      previous, self._pending = self._pending, self._agree(number)
      if previous is not None and int(previous):
        self.stopped = signal.Signals(int(previous)).name
    return self.stopped

  def __exit__(self, *exc):
    if self.stopped and self._agree is not None:
      return
    for sig, handler in self._previous.items():
      if handler is not None:  # None: a handler installed outside Python.
        signal.signal(sig, handler)


def _max_over_processes(
    strategy: parallel.Strategy) -> Callable[[int], jax.Array] | None:
  """`max_over_mesh`, or None with one process (which needs no agreement)."""
  if jax.process_count() == 1:
    return None
  return steps.max_over_mesh(strategy)
