"""Paths and file operations on workdirs and data locations: local or gs://.

Every file the project reads or writes under a workdir or a data location
goes through this module, so that a Cloud Storage bucket works wherever a
local directory does. Buckets go through `tf.io.gfile`: TensorBoard's
writer and tf.data's readers go through TensorFlow's filesystem layer
anyway, so one client, one set of credentials and one retry policy carry
every byte (etils.epath, which orbax uses, hands gs:// to the same layer
when TensorFlow is installed). Local paths go through the standard
library, so that programs without TensorFlow (the GPU machines have none)
still read and write their files. Two things do not go through this
module: orbax writes array data through tensorstore, and the workdir hold
below needs object generation preconditions, which only
google-cloud-storage offers.

A bucket has no rename and no append. So every write here replaces a whole
file: locally through a temporary file and an atomic rename, on a bucket as
one object upload (which readers see whole or not at all). Nothing is ever
appended in place.

Supported: local paths and `gs://BUCKET/...`. Any other scheme, or a typo
such as `gs:/bucket`, is refused in one line before any work.
"""

import contextlib
import dataclasses
import datetime
import fcntl
import glob as local_glob
import io
import json
import os
import posixpath
import re
import shutil
import socket
import threading
import time
from typing import Any, Iterator
import uuid

GCS_PREFIX = 'gs://'
SUPPORTED = 'a local path or gs://BUCKET/PATH'
_SCHEME = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*):')


@contextlib.contextmanager
def _one_line_errors(path: str) -> Iterator[Any]:
  """Yields tf.io.gfile; its errors become OSErrors whose message is one
  line (so that a tool reports them as such)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    yield tf.io.gfile
  except tf.errors.OpError as error:
    kind = {tf.errors.NotFoundError: FileNotFoundError,
            tf.errors.PermissionDeniedError: PermissionError}.get(
                type(error), OSError)
    raise kind(f'{path}: {" ".join(error.message.split())[:300]}') from None


def _io(operation: str, path: str, *args: Any) -> Any:
  """`tf.io.gfile.<operation>(path, *args)` with one-line errors."""
  with _one_line_errors(path) as gfile:
    return getattr(gfile, operation)(path, *args)


def is_bucket(path: str) -> bool:
  return str(path).startswith(GCS_PREFIX)


def check_location(path: str, what: str) -> str:
  """`path` ready to use: gs:// as given, a local path made absolute.

  Raises:
    ValueError: one line naming the scheme, for anything but a local path
      or gs://BUCKET (s3://, hdfs://, http://, `gs:/bucket`, ...).
  """
  path = str(path)
  if is_bucket(path):
    bucket = path[len(GCS_PREFIX):].split('/', 1)[0]
    if not bucket:
      raise ValueError(f'{what}: {path} names no bucket; use {SUPPORTED}')
    return path.rstrip('/') if path.count('/') > 2 else path
  match = _SCHEME.match(path)
  if match:
    raise ValueError(
        f'{what}: {path}: the scheme "{match.group(1)}:" is not supported; '
        f'use {SUPPORTED}')
  return os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
  if is_bucket(base):
    return posixpath.join(base, *parts)
  return os.path.join(base, *parts)


def basename(path: str) -> str:
  return posixpath.basename(str(path).rstrip('/'))


def dirname(path: str) -> str:
  return posixpath.dirname(str(path).rstrip('/'))


def exists(path: str) -> bool:
  if is_bucket(path):
    return _io('exists', path)
  return os.path.exists(path)


def isdir(path: str) -> bool:
  if is_bucket(path):
    return _io('isdir', path)
  return os.path.isdir(path)


def makedirs(path: str) -> None:
  if is_bucket(path):
    _io('makedirs', path)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  """Names in a directory (a bucket's directory entries lose their '/')."""
  if is_bucket(path):
    return sorted(name.rstrip('/') for name in _io('listdir', path))
  return sorted(os.listdir(path))


def glob(pattern: str) -> list[str]:
  if is_bucket(pattern):
    return sorted(_io('glob', pattern))
  return sorted(local_glob.glob(pattern))


def subfolders(path: str) -> list[str]:
  """Names of the folders in `path`, hidden ones left out."""
  if is_bucket(path):
    return [name for name in listdir(path)
            if not name.startswith('.') and isdir(join(path, name))]
  return sorted(e.name for e in os.scandir(path)
                if e.is_dir() and not e.name.startswith('.'))


def files_in(path: str) -> list[str]:
  """Names of the files in folder `path`, hidden ones left out (one
  listing request per 1000 names in a bucket, not one per file)."""
  if is_bucket(path):
    prefix = join(path, '')
    return sorted(name[len(prefix):] for name in glob(prefix + '*')
                  if not name.endswith('/')
                  and not basename(name).startswith('.')
                  and '/' not in name[len(prefix):])
  return sorted(e.name for e in os.scandir(path)
                if e.is_file() and not e.name.startswith('.'))


def read_bytes(path: str) -> bytes:
  if not is_bucket(path):
    with open(path, 'rb') as f:
      return f.read()
  with _one_line_errors(path) as gfile, gfile.GFile(path, 'rb') as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode()


def write_bytes(path: str, data: bytes) -> None:
  """Replaces `path` whole: a reader sees the old content or the new one,
  never part of it."""
  if is_bucket(path):  # One object upload at close.
    with _one_line_errors(path) as gfile, gfile.GFile(path, 'wb') as f:
      f.write(data)
    return
  temporary = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    with open(temporary, 'wb') as f:
      f.write(data)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode())


@contextlib.contextmanager
def writer(path: str) -> Iterator[io.BytesIO]:
  """A binary file object whose content replaces `path` whole on exit (for
  writers that want a file, such as matplotlib's `savefig`)."""
  buffer = io.BytesIO()
  yield buffer
  write_bytes(path, buffer.getvalue())


def read_json(path: str) -> Any:
  return json.loads(read_bytes(path))


def write_json(path: str, value: Any) -> None:
  write_text(path, json.dumps(value, indent=2, sort_keys=True) + '\n')


def remove(path: str) -> None:
  if is_bucket(path):
    _io('remove', path)
  else:
    os.remove(path)


def rmtree(path: str) -> None:
  if is_bucket(path):
    _io('rmtree', path)
  else:
    shutil.rmtree(path)


def rename(source: str, target: str) -> None:
  """Moves a file or a directory. In a bucket this copies every object
  and then deletes the originals: not atomic, so only for moving aside."""
  if not is_bucket(source):
    os.rename(source, target)
    return
  if not isdir(source):
    _io('rename', source, target, False)
    return
  with _one_line_errors(source) as gfile:
    for root, _, names in gfile.walk(source):
      inside = root[len(source):].lstrip('/')
      for name in names:
        gfile.rename(join(root, name), join(target, inside, name))
    gfile.rmtree(source)  # What is left: the folders' marker objects.


def copy_tree(source: str, target: str) -> None:
  """Copies a local directory's files to `target` (a bucket or a path)."""
  for root, _, names in os.walk(source):
    destination = join(target, os.path.relpath(root, source))
    makedirs(destination)
    for name in names:
      if is_bucket(target):
        _io('copy', os.path.join(root, name), join(destination, name), True)
      else:
        shutil.copyfile(os.path.join(root, name), join(destination, name))


def size(path: str) -> int:
  if is_bucket(path):
    return _io('stat', path).length
  return os.path.getsize(path)


def free_bytes(path: str) -> int | None:
  """Free space where `path` lives; None on a bucket (no such limit)."""
  if is_bucket(path):
    return None
  return shutil.disk_usage(path).free


# --- One run per workdir -------------------------------------------------

HOLD_FILE = '.run_hold.json'
HEARTBEAT_SECONDS = 30
# A holder on another host whose heartbeat is older than this is gone.
HOLD_EXPIRES_SECONDS = 120


class WorkdirHeld(ValueError):
  """Another live run holds the workdir; the message is one line."""


def _process_start(pid: int) -> str | None:
  """The kernel's start time of `pid` (tells a reused process id apart)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _holder_alive(holder: dict[str, Any], now: float) -> bool:
  """A holder on this host is alive while its process is; elsewhere until
  its heartbeat is older than the expiry it stated."""
  if holder.get('host') == socket.gethostname():
    try:
      os.kill(holder['pid'], 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      pass
    start = holder.get('process_start')
    return start is None or start == _process_start(holder['pid'])
  return now - holder.get('heartbeat', 0) < holder.get(
      'expires_after_seconds', HOLD_EXPIRES_SECONDS)


def describe_holder(holder: dict[str, Any]) -> str:
  return (f'host {holder.get("host")}, process id {holder.get("pid")}, '
          f'started {holder.get("started")}')


class _LocalHoldFile:
  """The hold file on a local or network filesystem. A compare-and-swap is
  a read, compare and write under an exclusive lock on a side file."""

  def __init__(self, path: str):
    self.path, self._lock_path = path, path + '.lock'

  @contextlib.contextmanager
  def _locked(self) -> Iterator[None]:
    with open(self._lock_path, 'a') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      try:
        yield
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)

  def _read_unlocked(self) -> tuple[dict[str, Any] | None, str | None]:
    try:
      with open(self.path) as f:
        text = f.read()
    except FileNotFoundError:
      return None, None
    try:
      return json.loads(text), text
    except ValueError:
      return {}, text  # Unreadable: treated as a dead holder.

  def read(self) -> tuple[dict[str, Any] | None, Any]:
    with self._locked():
      return self._read_unlocked()

  def swap(self, holder: dict[str, Any] | None, expected: Any) -> Any:
    """Writes `holder` (None: deletes) if the file still holds `expected`
    (None: absent); returns the new token, or False if it changed."""
    with self._locked():
      if self._read_unlocked()[1] != expected:
        return False
      if holder is None:
        os.remove(self.path)
        return None
      text = json.dumps(holder, sort_keys=True)
      write_text(self.path, text)
      return text


class _BucketHoldFile:
  """The hold object in a bucket: compare-and-swap through object
  generation preconditions (generation 0: the object must not exist)."""

  def __init__(self, path: str):
    from google.cloud import storage as gcs  # pylint: disable=g-import-not-at-top
    self.path = path
    bucket, name = path[len(GCS_PREFIX):].split('/', 1)
    self._blob = gcs.Client().bucket(bucket).blob(name)

  def read(self) -> tuple[dict[str, Any] | None, Any]:
    from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
    try:
      data = self._blob.download_as_bytes()
    except exceptions.NotFound:
      return None, None
    generation = self._blob.generation
    try:
      return json.loads(data), generation
    except ValueError:
      return {}, generation

  def swap(self, holder: dict[str, Any] | None, expected: Any) -> Any:
    from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
    try:
      if holder is None:
        self._blob.delete(if_generation_match=expected)
        return None
      # A multipart upload (content type given): the precondition is
      # honoured on every upload path of real GCS and of its emulators.
      self._blob.upload_from_string(
          json.dumps(holder, sort_keys=True), content_type='application/json',
          if_generation_match=expected or 0)
      return self._blob.generation
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      return False


@dataclasses.dataclass
class WorkdirHold:
  """This run's claim on a workdir: `acquire` refuses a workdir that a live
  run holds; a heartbeat thread keeps the claim fresh; `release` ends it.

  A dead holder never blocks: on the same host its process is gone at once;
  on another host its claim expires `HOLD_EXPIRES_SECONDS` after its last
  heartbeat.
  """
  workdir: str
  holder: dict[str, Any] = dataclasses.field(default_factory=dict)
  _token: Any = None
  _file: Any = None
  _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
  _thread: threading.Thread | None = None
  lost: bool = False

  def acquire(self) -> None:
    makedirs(self.workdir)
    path = join(self.workdir, HOLD_FILE)
    self._file = (_BucketHoldFile if is_bucket(path) else _LocalHoldFile)(path)
    now = time.time()
    self.holder = {
        'host': socket.gethostname(), 'pid': os.getpid(),
        'process_start': _process_start(os.getpid()),
        'started': datetime.datetime.fromtimestamp(now).astimezone()
                   .isoformat(timespec='seconds'),
        'heartbeat': now, 'expires_after_seconds': HOLD_EXPIRES_SECONDS}
    for _ in range(3):  # Another starter may swap in between.
      current, token = self._file.read()
      if current is not None and _holder_alive(current, time.time()):
        raise WorkdirHeld(
            f'--workdir: {self.workdir} is in use by another run '
            f'({describe_holder(current)}); wait for it to end or stop it, '
            'or use another --workdir')
      self._token = self._file.swap(self.holder, token)
      if self._token is not False:
        break
    else:
      raise WorkdirHeld(f'--workdir: {self.workdir}: other runs keep '
                        'claiming it at the same time; try again')
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      self.holder['heartbeat'] = time.time()
      try:
        token = self._file.swap(self.holder, self._token)
      except Exception:  # pylint: disable=broad-except
        continue  # A transient error; the next beat tries again.
      if token is False:
        self.lost = True
        print(f'warning: the hold on {self.workdir} was taken by another '
              'run (this run\'s heartbeats did not arrive in time)',
              flush=True)
        return
      self._token = token

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._file is not None and not self.lost:
      try:
        self._file.swap(None, self._token)
      except Exception:  # pylint: disable=broad-except
        pass  # Left behind, it expires or is seen to be dead.
