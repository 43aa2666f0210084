"""The parent that each process of a multi-host run starts under.

`main --distributed` runs the same command again as its child and waits:
whatever ends the child, the last line says why. The JAX runtime aborts a
process whose coordinator is gone with a C++ stack trace; the parent then
says which process was lost and where the same command resumes.

The parent imports only the standard library and `storage` (stdlib at
import), so it starts in a fraction of a second and holds no JAX or
TensorFlow memory on the host while its child trains.
"""

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

from alexnet_jax import storage

# Set in the supervised child: where it writes its process id and
# coordinator for the parent, and the parent's process id.
_CHILD_INFO_ENV = 'ALEXNET_JAX_PROCESS_INFO'
_PARENT_ENV = 'ALEXNET_JAX_SUPERVISOR_PID'
LOST_EXIT = 1
_TRUE = ('', 'true', 't', '1')
_FALSE = ('false', 'f', '0')


def wanted(argv: list[str]) -> bool:
  """Whether the command line `argv` asks for --distributed (absl's forms;
  the last one counts) in a process that is not yet supervised."""
  distributed = False
  for arg in argv:
    if not arg.startswith('-'):
      continue
    name, _, value = arg.lstrip('-').partition('=')
    if name == 'distributed' and value.lower() in _TRUE + _FALSE:
      distributed = value.lower() in _TRUE
    elif name == 'nodistributed' and not value:
      distributed = False
  return distributed and not is_supervised()


def is_supervised() -> bool:
  return _CHILD_INFO_ENV in os.environ


def supervise(workdir: str | None) -> int:
  """Runs this command again as a child and returns its exit status.

  The child inherits stdout and stderr, receives the SIGTERM and SIGINT
  sent to this process, and is killed if this process dies
  (`die_with_parent`). When the child is killed by a signal, the last line
  is this process's: which process was lost, and where the same command
  resumes (from `workdir`'s checkpoints).
  """
  with tempfile.TemporaryDirectory() as tmp:
    info_path = os.path.join(tmp, 'process.json')
    child = subprocess.Popen(
        [sys.executable, *sys.orig_argv[1:]],
        env=dict(os.environ, **{_CHILD_INFO_ENV: info_path,
                                _PARENT_ENV: str(os.getpid())}))
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    status = child.wait()
    if status >= 0:
      return status
    try:
      with open(info_path) as f:
        info = json.load(f)
    except (OSError, ValueError):
      info = None
  print(f'error: {_killed_child_line(-status, info, workdir)}',
        file=sys.stderr, flush=True)
  return LOST_EXIT


def die_with_parent() -> None:
  """In the supervised child: SIGKILL when the parent dies (Linux).

  Set by the child itself, as it starts: `preexec_fn` would run Python
  between fork and exec in a parent that may have threads. A parent that
  died before this is caught by its process id.
  """
  if sys.platform != 'linux':
    return
  ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  if str(os.getppid()) != os.environ.get(_PARENT_ENV):
    os._exit(LOST_EXIT)  # pylint: disable=protected-access


def tell(process_id: int, num_processes: int, coordinator: str) -> None:
  """In the supervised child, once it has joined the runtime: which process
  it is, for the parent's last line."""
  path = os.environ.get(_CHILD_INFO_ENV)
  if path:
    with open(path, 'w') as f:
      json.dump({'process_id': process_id, 'num_processes': num_processes,
                 'coordinator': coordinator}, f)


def resume_note(workdir: str | None) -> str:
  """Where the same command resumes: the latest step in the workdir's
  checkpoints, read from the listing alone (no orbax, no collectives), so
  that a process about to exit because a peer was lost can still say it."""
  if not workdir:
    return 'Run the same command to start again.'
  directory = storage.join(workdir, 'checkpoints')
  try:
    steps = [int(name) for name in storage.listdir(directory)
             if name.isdigit()]
  except Exception:  # pylint: disable=broad-except
    steps = []
  if not steps:
    where = f'the first step (no checkpoint in {directory} yet)'
  else:
    where = storage.join(directory, str(max(steps)))
  return f'Run the same command to resume from {where}.'


def reachable(address: str) -> bool:
  """Whether host:port accepts a connection within 2 s."""
  host, port = address.rsplit(':', 1)
  try:
    with socket.create_connection((host.strip('[]'), int(port)), timeout=2):
      return True
  except OSError:
    return False


def workdir_in(argv: list[str]) -> str | None:
  """--workdir's value in `argv` (--workdir=DIR or --workdir DIR)."""
  workdir = None
  for i, arg in enumerate(argv):
    if arg in ('--workdir', '-workdir') and i + 1 < len(argv):
      workdir = argv[i + 1]
    elif arg.startswith(('--workdir=', '-workdir=')):
      workdir = arg.split('=', 1)[1]
  return workdir


def _killed_child_line(signum: int, info: dict | None,
                       workdir: str | None) -> str:
  name = signal.Signals(signum).name
  resume = resume_note(workdir)
  if info is None:
    return f'stopped by {name} before joining the other processes; {resume}'
  me, coordinator = info['process_id'], info['coordinator']
  if me != 0 and not reachable(coordinator):
    return (f'process 0 of {info["num_processes"]} (the coordinator, '
            f'{coordinator}) was lost; process {me} stopped. {resume}')
  return (f'process {me} of {info["num_processes"]} was stopped by {name} '
          f'(the runtime\'s report is above). {resume}')
